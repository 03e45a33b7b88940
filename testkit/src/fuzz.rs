//! The fuzz entry points, one per target. The cargo-fuzz binaries in `fuzz/fuzz_targets/` call
//! them with libFuzzer's inputs; `tests/fuzz_replay.rs` calls them with the committed seeds and
//! regression inputs, so whatever crashed a target once is replayed through the same code by plain
//! `cargo test`, without nightly.
//!
//! Every entry drives the broker's real code and panics when an invariant of the product contract
//! breaks: a 5xx or a body that is not problem+json where the contract says 4xx, a session that
//! verifies without a genuine signature and valid claims, a secret in a response, a configuration
//! error that is not one line, an upstream answer that is accepted but cannot be served. The
//! returned [`Verdict`] lets the replay test check that `accept-*` seeds really reach deep code.
//!
//! Input formats (text, so seeds can be written by hand; see `fuzz/README.md`):
//! - `session_token`: a raw bearer token; or `sign:<header JSON>\n<claims JSON>`, which this file
//!   signs with the key the header's `alg` names (so claims handling is reachable); or
//!   `sign-pub:<header JSON>\n<claims JSON>`, HMAC-signed with the RSA *public* key (the classic
//!   algorithm-confusion forgery, which must never verify).
//! - `token_request` / `backend_request`: `Name: value` header lines, a blank line, the body. Without a
//!   blank line the whole input is the body, sent with a valid credential. Pseudo-headers:
//!   `:method: GET`, `:sign: <claims JSON>` (a Bearer session signed with the HS256 issuer's
//!   secret), `:sign-cookie: <claims JSON>` (the same in the session cookie), `:backend-secret:`
//!   (the real backend secret as Bearer), `:chunked:` (no Content-Length). A Content-Length header
//!   in the input is ignored: the HTTP decoder in front of the handlers makes it match the body.
//! - `config`: TOML; an optional line `#env` starts `KEY=VALUE` environment overrides.
//! - `client_key`: an optional first line `#ids CLIENT_ID KEY_ID` (`-` = not set), then a key file.
//! - `intellia_response`: a status line (`200`), header lines, a blank line, the body. Without a
//!   leading status line the whole input is a 200 body.

// Panicking is how a fuzz target reports a broken invariant.
#![allow(clippy::panic)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::pin::Pin;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, Service};
use actix_web::error::PayloadError;
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer, test};
use base64::Engine;
use futures_util::future::LocalBoxFuture;
use intellia_token_broker::testing::CachedToken;
use intellia_token_broker::testing::CorsPolicy;
use intellia_token_broker::testing::Credential;
use intellia_token_broker::testing::Identity;
use intellia_token_broker::testing::Settings;
use intellia_token_broker::testing::UpstreamError;
use intellia_token_broker::testing::{
    AppParts, Application, BuildOptions, backend_app, public_app,
};
use intellia_token_broker::testing::{BrokerError, ErrorCode, PROBLEM_JSON};
use intellia_token_broker::testing::{Simulator, SimulatorConfig};
use intellia_token_broker::testing::{TokenResponse, token_response};
use intellia_token_broker::testing::{error_for_status, parse_assume_role_body};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::Value;

use crate::jwt::now;

/// What the broker made of an input. The replay test expects `accept-*` seeds to be accepted and
/// `reject-*` seeds to be rejected; the fuzz targets ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Rejected(String),
}

pub const HS_SECRET: &str = "fuzz-hs256-secret-that-is-long-enough-0123456789";
/// The claims issuer's own HS256 secret: two issuers never share one.
pub const CLAIMS_HS_SECRET: &str = "fuzz-claims-hs256-secret-long-enough-9876543210";
pub const API_KEY: &str = "sk_fuzz_intellia_api_key_DO_NOT_LEAK_1c0ffee";
pub const BACKEND_SECRET: &str = "backend-secret-fuzz-DO-NOT-LEAK-9b7e";
const SECRETS: [&str; 4] = [HS_SECRET, CLAIMS_HS_SECRET, API_KEY, BACKEND_SECRET];
pub const AUDIENCE: &str = "chat-widget";
pub const ORG: &str = "org-fuzz";
const COOKIE: &str = "site_session";
/// The documented code a problem body names, if it names one.
fn documented(code: &str) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| c.as_str() == code)
}
const MAX_BODY_BYTES: usize = 4096;

/// The configured issuers, as the oracle needs them.
struct IssuerSpec {
    iss: &'static str,
    algorithms: &'static [&'static str],
    leeway: u64,
}

const HS_ISSUER: IssuerSpec = IssuerSpec {
    iss: "https://hs.fuzz.example",
    algorithms: &["HS256"],
    leeway: 30,
};
const JWKS_ISSUER: IssuerSpec = IssuerSpec {
    iss: "https://jwks.fuzz.example",
    algorithms: &["RS256", "PS256", "ES256"],
    leeway: 0,
};
/// Nested claim names, a user-id prefix and a required claim.
const CLAIMS_ISSUER: IssuerSpec = IssuerSpec {
    iss: "https://claims.fuzz.example",
    algorithms: &["HS256"],
    leeway: 5,
};
const ISSUERS: [&IssuerSpec; 3] = [&HS_ISSUER, &JWKS_ISSUER, &CLAIMS_ISSUER];

const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/ec-private.pem");
const JWKS: &str = include_str!("../../tests/fixtures/jwks.json");

// ---------------------------------------------------------------------------------------------
// The world: the real application, built once per thread, against the simulator and a JWKS server.

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

type BoxedPayloadStream = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, PayloadError>>>>;
type CallFn = Box<dyn Fn(test::TestRequest, Payload) -> LocalBoxFuture<'static, Answer>>;

/// The application of each listener, driven in process.
struct Calls {
    public: CallFn,
    backend: CallFn,
}

struct World {
    system: actix_web::rt::SystemRunner,
    parts: AppParts,
    call: Calls,
}

/// A [`CallFn`] for an application: the real service, built as a listener's worker builds it.
macro_rules! caller {
    ($app:expr) => {{
        let service = std::rc::Rc::new(test::init_service($app).await);
        let call: CallFn = Box::new(move |request: test::TestRequest, payload: Payload| {
            let service = std::rc::Rc::clone(&service);
            Box::pin(async move {
                let (request, _) = request.to_request().replace_payload(payload);
                match service.call(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let headers = response.headers().clone();
                        let body = actix_web::body::to_bytes(response.into_body())
                            .await
                            .unwrap_or_default();
                        Answer {
                            status,
                            headers,
                            body,
                        }
                    }
                    // What the HTTP dispatcher does with an error that left the app.
                    Err(error) => {
                        let response = error.error_response();
                        let status = response.status().as_u16();
                        let headers = response.headers().clone();
                        let body = response.into_body().try_into_bytes().unwrap_or_default();
                        Answer {
                            status,
                            headers,
                            body,
                        }
                    }
                }
            })
        });
        call
    }};
}

thread_local! {
    // Leaked on purpose: the world lives as long as its thread, and tearing down running servers
    // in a thread-local destructor only aborts the process.
    static WORLD: &'static World = Box::leak(Box::new(World::start()));
}

fn with_world<T>(f: impl FnOnce(&World) -> T) -> T {
    WORLD.with(|world| f(world))
}

fn config_text(dir: &std::path::Path, simulator: &str, jwks: &str) -> String {
    let dir = dir.display();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]
max_body_bytes = {MAX_BODY_BYTES}
workers = 1
secret_poll_secs = 300

[intellia]
base_url = "{simulator}"
organization_id = "{ORG}"
api_key_file = "{dir}/api-key"
timeout_ms = 5000
# One retry, as production has (default 2): it absorbs the rare keep-alive race, and a real upstream
# failure still fails twice.
max_retries = 1

[cors]
allowed_origins = ["https://www.example.com", "https://*.example.org"]

[[session.jwt]]
issuer = "{hs}"
audience = "{AUDIENCE}"
hs256_secret_file = "{dir}/hs256"
algorithms = ["HS256"]
cookie = "{COOKIE}"
leeway_secs = {hs_leeway}
user_id_prefix = "hs:"

[[session.jwt]]
issuer = "{jwks_iss}"
audience = "{AUDIENCE}"
jwks_url = "{jwks}/jwks.json"
algorithms = ["RS256", "PS256", "ES256"]
leeway_secs = {jwks_leeway}
user_id_prefix = "jwks:"

[[session.jwt]]
issuer = "{claims}"
audience = "{AUDIENCE}"
hs256_secret_file = "{dir}/claims-hs256"
algorithms = ["HS256"]
user_id_claim = "uid"
email_claim = "contact.email"
name_claim = "profile.display_name"
user_id_prefix = "site:"
required_claims = ["realm_access.roles=chat"]
leeway_secs = {claims_leeway}

[backend]
listen = "127.0.0.1:0"
secret_file = "{dir}/backend"

[rate_limit.per_user]
per_minute = 1000000
burst = 1000000

[rate_limit.per_ip]
per_minute = 1000000
burst = 1000000

[rate_limit.upstream]
per_second = 1000000
burst = 1000000

[cache]
enabled = true
min_remaining_secs = 900
max_entries = 10000
"#,
        hs = HS_ISSUER.iss,
        hs_leeway = HS_ISSUER.leeway,
        jwks_iss = JWKS_ISSUER.iss,
        jwks_leeway = JWKS_ISSUER.leeway,
        claims = CLAIMS_ISSUER.iss,
        claims_leeway = CLAIMS_ISSUER.leeway,
    )
}

/// Serves the fixture JWKS (keys `rsa-1` and `ec-1`) as an identity provider would, on actix
/// worker threads (so it answers while libFuzzer has the main thread).
fn start_jwks_server() -> String {
    let body = crate::idp::jwks(&["rsa-1", "ec-1"]).to_string();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind JWKS server");
    let base = format!("http://{}", listener.local_addr().expect("JWKS address"));
    let server = HttpServer::new(move || {
        let body = body.clone();
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let body = body.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen JWKS server")
    .run();
    actix_web::rt::spawn(server);
    base
}

impl World {
    fn start() -> World {
        let system = actix_web::rt::System::new();
        let (parts, call) = system.block_on(async {
            let simulator = Simulator::start(
                TcpListener::bind("127.0.0.1:0").expect("bind simulator"),
                SimulatorConfig {
                    organization_id: Some(ORG.to_owned()),
                    keys: intellia_token_broker::testing::KeyPolicy::Keys(HashMap::from([(
                        API_KEY.to_owned(),
                        true,
                    )])),
                    ..SimulatorConfig::default()
                },
            )
            .expect("start simulator");
            let simulator_url = simulator.base_url();
            actix_web::rt::spawn(simulator.server);
            let jwks = start_jwks_server();

            // The secrets go through the real file loading; they are in memory once built.
            let dir = std::env::temp_dir().join(format!(
                "intellia-token-broker-fuzz-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::write(dir.join("api-key"), API_KEY).expect("write key");
            std::fs::write(dir.join("hs256"), HS_SECRET).expect("write secret");
            std::fs::write(dir.join("claims-hs256"), CLAIMS_HS_SECRET).expect("write secret");
            std::fs::write(dir.join("backend"), BACKEND_SECRET).expect("write secret");
            let settings = Settings::from_toml_with_env(
                &config_text(&dir, &simulator_url, &jwks),
                Vec::<(String, String)>::new(),
            )
            .expect("the fuzz configuration is valid");
            let app = Application::build(settings, BuildOptions::default())
                .await
                .expect("the broker builds");
            let _ = std::fs::remove_dir_all(&dir);
            let parts = app.parts();
            // A JWKS issuer answers 503 until its keys are loaded; fuzzing starts after that.
            for _ in 0..500 {
                if parts.verifier.keys_loaded() {
                    break;
                }
                actix_web::rt::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(parts.verifier.keys_loaded(), "the JWKS never loaded");

            let call = Calls {
                public: caller!(public_app(parts.clone())),
                backend: caller!(backend_app(parts.clone())),
            };
            // The listeners were bound but are never polled: requests go through `call`.
            drop(app);
            // One mint before any input, so every server thread has built its routes and opened
            // its connections (one-time allocations that leak checks would blame on the first input).
            let warm_up = test::TestRequest::post()
                .uri("/v1/backend/token")
                .peer_addr("127.0.0.1:40000".parse().expect("address"))
                .insert_header((header::AUTHORIZATION, format!("Bearer {BACKEND_SECRET}")))
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .insert_header((header::CONTENT_LENGTH, 20));
            let body: BoxedPayloadStream = Box::pin(futures_util::stream::iter([Ok(
                Bytes::from_static(br#"{"userId":"warm-up"}"#),
            )]));
            let answer = (call.backend)(warm_up, Payload::from(body)).await;
            assert_eq!(answer.status, 200, "warm-up mint: {:?}", answer.body);
            (parts, call)
        });
        World {
            system,
            parts,
            call,
        }
    }
}

/// Lets the runtime handle what happened while libFuzzer had the thread: a production runtime runs
/// all the time, this one only inside `block_on`. Without it a pooled upstream connection that the
/// simulator closed after its keep-alive (5 s) is reused as if open, and the mint fails.
async fn settle() {
    for _ in 0..3 {
        actix_web::rt::task::yield_now().await;
    }
}

/// Builds this thread's application, simulator and JWKS server now rather than on the first input
/// (the fuzz targets call it from libFuzzer's initialisation).
pub fn init() {
    with_world(|_| ());
}

// ---------------------------------------------------------------------------------------------
// Session tokens.

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64_json(segment: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

/// `<header>.<claims>.<signature>` signed with the key the header's `alg` names: the fixture RSA or
/// P-256 key for asymmetric algorithms, otherwise the HS256 secret of the issuer the claims name
/// (the HS256 issuer's for any other). `alg: none` gets an empty signature.
pub fn sign(header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let alg = serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
    if alg
        .as_deref()
        .is_some_and(|a| a.eq_ignore_ascii_case("none"))
    {
        return format!("{message}.");
    }
    let alg = alg.as_deref().and_then(algorithm);
    if let Some(signature) = alg.and_then(|alg| sign_asymmetric(message.as_bytes(), alg)) {
        return format!("{message}.{}", b64(&signature));
    }
    let alg = match alg {
        Some(a @ (Algorithm::HS384 | Algorithm::HS512)) => a,
        _ => Algorithm::HS256,
    };
    let iss = serde_json::from_slice::<Value>(claims)
        .ok()
        .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_owned));
    let key = EncodingKey::from_secret(hs_secret(iss.as_deref()).as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("signing");
    format!("{message}.{signature}")
}

/// The HS256 secret of the issuer named `iss`: each HS256 issuer has its own.
fn hs_secret(iss: Option<&str>) -> &'static str {
    if iss == Some(CLAIMS_ISSUER.iss) {
        CLAIMS_HS_SECRET
    } else {
        HS_SECRET
    }
}

/// RSA and ECDSA signatures through ring (as rustls exposes it): the pure-Rust `rsa` crate takes
/// about 100 ms a signature in the fuzz build (debug assertions, ASan), ring a millisecond.
fn sign_asymmetric(message: &[u8], alg: Algorithm) -> Option<Vec<u8>> {
    use rustls::SignatureScheme as S;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use rustls::sign::SigningKey;
    use std::sync::{Arc, OnceLock};

    static RSA: OnceLock<Arc<dyn SigningKey>> = OnceLock::new();
    static EC: OnceLock<Arc<dyn SigningKey>> = OnceLock::new();
    let load = |pem: &[u8]| {
        let der = PrivateKeyDer::from_pem_slice(pem).expect("fixture key");
        rustls::crypto::ring::sign::any_supported_type(&der).expect("a key ring can use")
    };
    let (key, scheme) = match alg {
        Algorithm::RS256 => (RSA.get_or_init(|| load(RSA_PRIVATE)), S::RSA_PKCS1_SHA256),
        Algorithm::RS384 => (RSA.get_or_init(|| load(RSA_PRIVATE)), S::RSA_PKCS1_SHA384),
        Algorithm::RS512 => (RSA.get_or_init(|| load(RSA_PRIVATE)), S::RSA_PKCS1_SHA512),
        Algorithm::PS256 => (RSA.get_or_init(|| load(RSA_PRIVATE)), S::RSA_PSS_SHA256),
        Algorithm::PS384 => (RSA.get_or_init(|| load(RSA_PRIVATE)), S::RSA_PSS_SHA384),
        Algorithm::PS512 => (RSA.get_or_init(|| load(RSA_PRIVATE)), S::RSA_PSS_SHA512),
        Algorithm::ES256 => (
            EC.get_or_init(|| load(EC_PRIVATE)),
            S::ECDSA_NISTP256_SHA256,
        ),
        _ => return None,
    };
    let signature = key.choose_scheme(&[scheme])?.sign(message).ok()?;
    if alg == Algorithm::ES256 {
        return ecdsa_der_to_jws(&signature, 32);
    }
    Some(signature)
}

/// ring's ECDSA signature is DER (`SEQUENCE { INTEGER r, INTEGER s }`); JWS wants `r || s`, each
/// left-padded to the curve's size.
fn ecdsa_der_to_jws(der: &[u8], size: usize) -> Option<Vec<u8>> {
    fn integer(input: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let len = usize::from(len);
        (tag == 0x02 && len < 0x80 && rest.len() >= len).then(|| rest.split_at(len))
    }
    let body = der.strip_prefix(&[0x30])?;
    let (&len, body) = body.split_first()?;
    if usize::from(len) != body.len() {
        return None;
    }
    let (r, rest) = integer(body)?;
    let (s, _) = integer(rest)?;
    let mut out = Vec::with_capacity(2 * size);
    for n in [r, s] {
        let n = &n[n.iter().take_while(|b| **b == 0).count()..];
        if n.len() > size {
            return None;
        }
        out.resize(out.len() + size - n.len(), 0);
        out.extend_from_slice(n);
    }
    Some(out)
}

/// The same, but an HMAC keyed with the RSA public key: what an attacker who only knows the
/// public key can produce.
fn sign_with_public_key(header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(RSA_PUBLIC),
        Algorithm::HS256,
    )
    .expect("signing");
    format!("{message}.{signature}")
}

fn split_sign_input(rest: &[u8]) -> (&[u8], &[u8]) {
    match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, b"{}"),
    }
}

/// The keys an issuer's tokens may genuinely be signed with.
fn issuer_keys(issuer: &IssuerSpec) -> Vec<DecodingKey> {
    if issuer.algorithms == ["HS256"] {
        return vec![DecodingKey::from_secret(
            hs_secret(Some(issuer.iss)).as_bytes(),
        )];
    }
    let all: Value = serde_json::from_str(JWKS).expect("fixture JWKS");
    ["rsa-1", "ec-1"]
        .iter()
        .map(|kid| {
            let jwk: Jwk = serde_json::from_value(all[*kid].clone()).expect("fixture JWK");
            DecodingKey::from_jwk(&jwk).expect("fixture key")
        })
        .collect()
}

fn audience_matches(aud: Option<&Value>) -> bool {
    match aud {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    }
}

/// The oracle for an accepted session: everything the README's security model says verification checks, checked
/// again independently of the verifier.
fn assert_genuine(token: &str, identity: &Identity) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "accepted a token that is not three segments"
    );
    let header = unb64_json(parts[0]).expect("accepted a token whose header is not JSON");
    let claims = unb64_json(parts[1]).expect("accepted a token whose claims are not JSON");
    assert!(
        header.get("crit").is_none(),
        "accepted a token that demands an extension"
    );
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .expect("accepted a token without iss");
    let issuer = ISSUERS
        .iter()
        .find(|i| i.iss == iss)
        .expect("accepted a token from an issuer that is not configured");
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .expect("accepted a token without alg");
    assert!(
        issuer.algorithms.contains(&alg_name),
        "accepted alg {alg_name} for {iss}"
    );
    let alg = algorithm(alg_name).expect("accepted an unknown alg");
    let message = format!("{}.{}", parts[0], parts[1]);
    assert!(
        issuer_keys(issuer).iter().any(|key| {
            jsonwebtoken::crypto::verify(parts[2], message.as_bytes(), key, alg).unwrap_or(false)
        }),
        "accepted a signature that no key of {iss} made"
    );
    assert!(
        audience_matches(claims.get("aud")),
        "accepted a token for another audience"
    );
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .expect("accepted a token without a numeric exp");
    // A few seconds of slack: the clock moved between verification and this check.
    let slack = 5.0;
    assert!(
        exp + (issuer.leeway as f64) + slack >= now() as f64,
        "accepted an expired token"
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(
            nbf <= (now() + issuer.leeway) as f64 + slack,
            "accepted a token that is not valid yet"
        );
    }
    assert_identity(identity);
}

/// Intellia's `userId` rule, written out again for the oracle: 1–256 characters, no control
/// characters.
fn valid_user_id(id: &str) -> bool {
    (1..=256).contains(&id.chars().count()) && !id.chars().any(char::is_control)
}

fn assert_identity(identity: &Identity) {
    let user_id = identity.user_id.as_str();
    assert!(
        valid_user_id(user_id),
        "identity with an invalid user id {user_id:?}"
    );
    if let Some(email) = &identity.email {
        let email = email.as_str();
        let (local, domain) = email.rsplit_once('@').expect("an e-mail without @");
        assert!(
            !local.is_empty()
                && domain.contains('.')
                && email.chars().count() <= 320
                && !email.chars().any(|c| c.is_control() || c.is_whitespace()),
            "implausible e-mail {email:?}"
        );
    }
    if let Some(name) = &identity.name {
        let name = name.as_str();
        assert!(
            !name.is_empty() && name.chars().count() <= 256 && !name.chars().any(char::is_control),
            "unacceptable name {name:?}"
        );
    }
}

/// `session_token`: a token through the real `SessionVerifier` (as Bearer, as the session cookie,
/// and directly), plus the header and cookie parsing in front of it.
pub fn session_token(data: &[u8]) -> Verdict {
    let token = if let Some(rest) = data.strip_prefix(b"sign:") {
        let (header, claims) = split_sign_input(rest);
        sign(header, claims).into_bytes()
    } else if let Some(rest) = data.strip_prefix(b"sign-pub:") {
        let (header, claims) = split_sign_input(rest);
        sign_with_public_key(header, claims).into_bytes()
    } else {
        data.to_vec()
    };
    with_world(|world| {
        world.system.block_on(async {
            settle().await;
            let verifier = &world.parts.verifier;
            let mut verdicts = Vec::new();
            let mut bearer = b"Bearer ".to_vec();
            bearer.extend_from_slice(&token);
            let mut cookie = format!("other=1; {COOKIE}=").into_bytes();
            cookie.extend_from_slice(&token);
            for (name, value) in [(header::AUTHORIZATION, bearer), (header::COOKIE, cookie)] {
                let Ok(value) = HeaderValue::from_bytes(&value) else {
                    continue;
                };
                let request = test::TestRequest::default()
                    .insert_header((name, value))
                    .to_http_request();
                let Ok(credential) = verifier.credential(request.headers()) else {
                    verdicts.push(Verdict::Rejected("no credential".into()));
                    continue;
                };
                verdicts.push(match verifier.verify(&credential).await {
                    Ok(identity) => {
                        assert_genuine(&credential.token, &identity);
                        Verdict::Accepted
                    }
                    Err(e) => rejected(&e),
                });
            }
            if let Ok(text) = std::str::from_utf8(&token) {
                verdicts.push(match verifier.verify(&Credential::bearer(text)).await {
                    Ok(identity) => {
                        assert_genuine(text, &identity);
                        Verdict::Accepted
                    }
                    Err(e) => rejected(&e),
                });
            }
            verdicts
                .into_iter()
                .find(|v| *v == Verdict::Accepted)
                .unwrap_or_else(|| Verdict::Rejected("refused".into()))
        })
    })
}

fn rejected(error: &BrokerError) -> Verdict {
    use actix_web::ResponseError;
    let status = error.status_code().as_u16();
    // A session provider outage is 503 by design; everything else about a token is the caller's.
    assert!(
        matches!(status, 401 | 403) || matches!(error, BrokerError::SessionProviderUnavailable),
        "a session token got {status} ({error})"
    );
    let detail = error.to_string();
    assert!(
        !SECRETS.iter().any(|s| detail.contains(s)),
        "a secret in {detail}"
    );
    Verdict::Rejected(format!("{}: {detail}", error.code()))
}

// ---------------------------------------------------------------------------------------------
// The two token routes, through the real actix application.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Token,
    Backend,
}

fn default_claims() -> String {
    serde_json::json!({
        "iss": HS_ISSUER.iss,
        "aud": AUDIENCE,
        "sub": "fuzz-user",
        "email": "fuzz.user@example.com",
        "name": "Fuzz User",
        "exp": now() + 3600,
    })
    .to_string()
}

fn hs_header() -> &'static [u8] {
    br#"{"alg":"HS256","typ":"JWT"}"#
}

/// Splits `head\n\nbody`; `None` for the head when there is no blank line.
fn split_head(data: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let blank = data.windows(2).position(|w| w == b"\n\n");
    match blank {
        Some(i) => (Some(&data[..i]), &data[i + 2..]),
        None => (None, data),
    }
}

/// The head's lines as `(name, value)`; pseudo-header names keep their leading `:`.
fn head_lines(head: &[u8]) -> Vec<(&[u8], &[u8])> {
    head.split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let start = usize::from(line.first() == Some(&b':'));
            let colon = start + line[start..].iter().position(|b| *b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
        })
        .collect()
}

fn request_route(route: Route, data: &[u8]) -> Verdict {
    let (head, body) = split_head(data);
    let mut method = Method::POST;
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    let mut chunked = false;
    match head {
        None => match route {
            Route::Token => headers.push((
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!(
                    "Bearer {}",
                    sign(hs_header(), default_claims().as_bytes())
                ))
                .expect("a JWT is a valid header value"),
            )),
            Route::Backend => {
                headers.push((
                    header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {BACKEND_SECRET}")).expect("header"),
                ));
                headers.push((
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ));
            }
        },
        Some(head) => {
            for (name, value) in head_lines(head) {
                match name {
                    b":method" => {
                        if let Ok(m) = Method::from_bytes(value) {
                            method = m;
                        }
                    }
                    b":sign" => {
                        let jwt = sign(hs_header(), value);
                        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {jwt}")) {
                            headers.push((header::AUTHORIZATION, v));
                        }
                    }
                    b":sign-cookie" => {
                        let jwt = sign(hs_header(), value);
                        if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}={jwt}")) {
                            headers.push((header::COOKIE, v));
                        }
                    }
                    b":backend-secret" => headers.push((
                        header::AUTHORIZATION,
                        HeaderValue::from_str(&format!("Bearer {BACKEND_SECRET}")).expect("header"),
                    )),
                    b":chunked" => chunked = true,
                    name => {
                        let (Ok(name), Ok(value)) =
                            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                        else {
                            continue;
                        };
                        if name != header::CONTENT_LENGTH {
                            headers.push((name, value));
                        }
                    }
                }
            }
        }
    }
    let path = match route {
        Route::Token => "/v1/token",
        Route::Backend => "/v1/backend/token",
    };
    let mut request = test::TestRequest::default()
        .method(method.clone())
        .uri(path)
        .peer_addr("127.0.0.1:40000".parse().expect("address"));
    for (name, value) in headers {
        request = request.append_header((name, value));
    }
    if !chunked {
        request = request.insert_header((header::CONTENT_LENGTH, body.len()));
    }
    // Several chunks, as a body arrives from the network, so the running size check is exercised.
    let chunks: Vec<Result<Bytes, PayloadError>> = body
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream: BoxedPayloadStream = Box::pin(futures_util::stream::iter(chunks));
    with_world(|world| {
        let answer = world.system.block_on(async {
            settle().await;
            let call = match route {
                Route::Token => &world.call.public,
                Route::Backend => &world.call.backend,
            };
            call(request, Payload::from(stream)).await
        });
        check_answer(data, &method, &answer)
    })
}

/// The HTTP contract of the token routes, whatever was asked.
fn check_answer(data: &[u8], method: &Method, answer: &Answer) -> Verdict {
    let status = answer.status;
    let body = String::from_utf8_lossy(&answer.body);
    assert!(
        (200..500).contains(&status),
        "HTTP {status} on {method}: {body}"
    );
    // A caller that sent a secret's text itself may see it echoed (an unknown field's name in a
    // 400, say); any other secret in a response is a leak.
    let sent = |secret: &str| data.windows(secret.len()).any(|w| w == secret.as_bytes());
    for secret in SECRETS.into_iter().filter(|s| !sent(s)) {
        assert!(!body.contains(secret), "a secret in the body: {body}");
        for (_, value) in answer.headers.iter() {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(secret),
                "a secret in a header"
            );
        }
    }
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec());
    if status >= 400 {
        assert_eq!(
            content_type.as_deref(),
            Some(PROBLEM_JSON.as_bytes()),
            "HTTP {status} without problem+json: {body}"
        );
        let problem: Value = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("HTTP {status} with a body that is not JSON ({e}): {body}"));
        let code = problem["code"].as_str().unwrap_or_default();
        let documented =
            documented(code).unwrap_or_else(|| panic!("undocumented code {code:?}: {body}"));
        assert_eq!(
            documented.status().as_u16(),
            status,
            "{code} answered with another status: {body}"
        );
        assert_eq!(
            problem["status"].as_u64(),
            Some(u64::from(status)),
            "{body}"
        );
        assert!(problem["detail"].is_string(), "{body}");
        if status == 401 {
            assert!(
                answer.headers.contains_key(header::WWW_AUTHENTICATE),
                "401 without WWW-Authenticate"
            );
        }
        return Verdict::Rejected(format!("{status} {code}"));
    }
    if *method == Method::POST {
        assert_eq!(status, 200, "POST answered {status}: {body}");
        let token: TokenResponse = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("a 200 that is not a token response ({e}): {body}"));
        assert!(token.token.starts_with("sim_"), "{body}");
        assert!(
            time::OffsetDateTime::parse(
                token.expires_at.as_str(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{body}"
        );
        assert_eq!(token.organization_id, ORG);
        assert!(valid_user_id(&token.user_id), "{body}");
        assert!(
            (0..=7200).contains(&token.expires_in),
            "expiresIn {}",
            token.expires_in
        );
        assert_eq!(
            answer
                .headers
                .get(header::CACHE_CONTROL)
                .map(HeaderValue::as_bytes),
            Some(&b"no-store"[..]),
            "a token response that may be cached"
        );
    }
    Verdict::Accepted
}

/// `token_request`: `POST /v1/token` (browser route) through the real application.
pub fn token_request(data: &[u8]) -> Verdict {
    request_route(Route::Token, data)
}

/// `backend_request`: `POST /v1/backend/token` (sidecar route) through the real application.
pub fn backend_request(data: &[u8]) -> Verdict {
    request_route(Route::Backend, data)
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// `config`: TOML and environment overrides through the real loader and validation, then what
/// start-up and `check-config` do with a configuration that passed.
pub fn config(data: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(data) else {
        return Verdict::Rejected("not UTF-8".into());
    };
    let (toml, env) = match text.split_once("\n#env\n") {
        Some((toml, env)) => (toml, env),
        None => match text.strip_prefix("#env\n") {
            Some(env) => ("", env),
            None => (text, ""),
        },
    };
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let settings = match Settings::from_toml_with_env(toml, env) {
        Ok(settings) => settings,
        Err(e) => {
            // A configuration problem is one line naming the key.
            assert!(
                !e.0.contains(['\n', '\r']),
                "a configuration error of several lines: {:?}",
                e.0
            );
            return Verdict::Rejected(e.0);
        }
    };
    // What `check-config` prints must render, and must itself be a valid configuration.
    let shown = settings.redacted_toml();
    assert!(
        !shown.starts_with("# cannot render"),
        "check-config cannot render a valid configuration: {shown}"
    );
    if let Err(e) = Settings::from_toml_with_env(&shown, Vec::<(String, String)>::new()) {
        panic!("check-config printed a configuration that does not load ({e}):\n{shown}");
    }
    // Start-up must accept whatever validation accepted.
    let _ = CorsPolicy::new(&settings.cors);
    let url = settings.intellia.assume_role_url();
    let expected_tail = format!(
        "/orgs/{}/assume-role",
        settings.intellia.organization_id.as_str()
    );
    assert!(
        url.path().ends_with(&expected_tail) && url.query().is_none() && url.fragment().is_none(),
        "intellia.base_url {:?} sends the mint to {url}",
        settings.intellia.base_url
    );
    let _ = settings.intellia.deadline();
    Verdict::Accepted
}

// ---------------------------------------------------------------------------------------------
// Intellia's answers.

/// `intellia_response`: an assume-role answer through the client's parsing and classification,
/// then through what the broker does with an accepted token (cache entry, response body).
pub fn intellia_response(data: &[u8]) -> Verdict {
    let first_line_end = data.iter().position(|b| *b == b'\n');
    let status_line = first_line_end.map(|i| data[..i].trim_ascii());
    let parsed_status = status_line
        .filter(|l| !l.is_empty() && l.iter().all(u8::is_ascii_digit))
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.parse::<u16>().ok())
        .and_then(|s| reqwest::StatusCode::from_u16(s).ok());
    let (status, headers, body) = match (parsed_status, first_line_end) {
        (Some(status), Some(end)) => {
            let rest = &data[end + 1..];
            let (head, body) = match split_head(rest) {
                (Some(head), body) => (head, body),
                (None, body) if rest.first() == Some(&b'\n') => (&rest[..0], &body[1..]),
                (None, body) => (&rest[..0], body),
            };
            let mut headers = reqwest::header::HeaderMap::new();
            for line in head.split(|b| *b == b'\n') {
                let Some(colon) = line.iter().position(|b| *b == b':') else {
                    continue;
                };
                if let (Ok(name), Ok(value)) = (
                    reqwest::header::HeaderName::from_bytes(&line[..colon]),
                    reqwest::header::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
                ) {
                    headers.append(name, value);
                }
            }
            (status, headers, body)
        }
        _ => (
            reqwest::StatusCode::OK,
            reqwest::header::HeaderMap::new(),
            data,
        ),
    };

    if !status.is_success() {
        let error = error_for_status(status, &headers);
        match (&error, status.as_u16()) {
            (
                UpstreamError::Unavailable {
                    retry_after_secs, ..
                },
                429 | 500..=599,
            ) => {
                assert!(
                    retry_after_secs.is_none_or(|s| (1..=3600).contains(&s)),
                    "Retry-After passed on unbounded: {retry_after_secs:?}"
                );
            }
            (UpstreamError::Rejected { status: s }, code @ 400..=499) => assert_eq!(*s, code),
            (UpstreamError::Invalid { .. }, 100..=199 | 300..=399 | 600..) => {}
            (error, code) => panic!("HTTP {code} classified as {error:?}"),
        }
        assert_upstream_error(error.clone());
        return Verdict::Rejected(error.to_string());
    }

    match parse_assume_role_body(body) {
        Ok(minted) => {
            // The cache works out how long the token stays fresh; the route renders it.
            let cached = CachedToken::new(minted, Duration::from_secs(900));
            let now = time::OffsetDateTime::now_utc();
            let rendered = token_response(&cached.minted, now).unwrap_or_else(|e| {
                panic!(
                    "an accepted token cannot be served ({e}), expiresAt {}",
                    cached.minted.expires_at
                )
            });
            assert!(rendered.expires_in >= 0);
            assert_eq!(cached.minted.expires_at.offset(), time::UtcOffset::UTC);
            serde_json::to_vec(&rendered).expect("a token response serializes");
            Verdict::Accepted
        }
        Err(error) => {
            assert!(
                matches!(error, UpstreamError::Invalid { .. }),
                "a 2xx body classified as {error:?}"
            );
            assert_upstream_error(error.clone());
            Verdict::Rejected(error.to_string())
        }
    }
}

fn assert_upstream_error(error: UpstreamError) {
    use actix_web::ResponseError;
    let broker = BrokerError::from(error);
    let status = broker.status_code().as_u16();
    assert!(
        matches!(status, 502..=504),
        "an upstream problem answered {status}"
    );
    let response = broker.error_response();
    let body = response.into_body().try_into_bytes().unwrap_or_default();
    let problem: Value = serde_json::from_slice(&body).expect("problem JSON");
    let code = problem["code"].as_str().unwrap_or_default();
    assert_eq!(documented(code).map(|c| c.status().as_u16()), Some(status));
}

// ---------------------------------------------------------------------------------------------
// The introspection client key file.

/// `client_key`: a `private_key_jwt` key file through the parser the secrets registry uses
/// (`ClientKey::parse`), then, for a key that parsed, one client assertion. Input: an optional
/// first line `#ids CLIENT_ID KEY_ID` (`-` for an id not configured), then the file's text.
pub fn client_key(data: &[u8]) -> Verdict {
    use intellia_token_broker::testing::{ClientKey, MIN_RSA_BITS};

    let Ok(text) = std::str::from_utf8(data) else {
        return Verdict::Rejected("not UTF-8".into());
    };
    let (ids, file) = match text.strip_prefix("#ids ") {
        Some(rest) => rest.split_once('\n').unwrap_or((rest, "")),
        None => ("- -", text),
    };
    let mut ids = ids.split_whitespace().map(|id| (id != "-").then_some(id));
    let (client_id, key_id) = (ids.next().flatten(), ids.next().flatten());
    let key = match ClientKey::parse(file, client_id, key_id) {
        Ok(key) => key,
        Err(e) => {
            let message = e.to_string();
            // One line, and never the key: no PEM armour, no long run of base64 from the file.
            assert!(!message.contains(['\n', '\r']), "{message:?}");
            assert!(!message.contains("KEY-----"), "{message:?}");
            assert!(message.len() < 400, "{message:?}");
            return Verdict::Rejected(message);
        }
    };
    assert!(
        key.bits() >= MIN_RSA_BITS,
        "a {}-bit key accepted",
        key.bits()
    );
    if let Some(id) = client_id {
        assert_eq!(
            key.client_id(),
            id,
            "the configured client id is the one used"
        );
    }
    if let Some(id) = key_id {
        assert_eq!(key.key_id(), id, "the configured key id is the one used");
    }
    assert!(
        !format!("{key:?}").contains("PRIVATE"),
        "Debug shows key material"
    );
    let assertion = key
        .assertion("https://issuer.example", now())
        .expect("an accepted key signs");
    let header = jsonwebtoken::decode_header(&assertion).expect("the assertion is a JWS");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some(key.key_id()));
    Verdict::Accepted
}
