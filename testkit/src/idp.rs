//! Identity providers for tests: [`FakeIdp`], whose keys and health tests control, and
//! [`serve_jwks`], a fixed JWKS for benchmarks and the fuzz harness.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::consts::{AUDIENCE, fixture};
use crate::jwt::claims;

/// `tests/fixtures/jwks.json`: the fixture public keys by kid (`rsa-1`, `rsa-2`, `ec-1`).
pub fn fixture_jwks() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap()
}

/// A JWKS document (`{"keys": [...]}`) with the fixture keys of these kids.
pub fn jwks(kids: &[&str]) -> Value {
    let all = fixture_jwks();
    json!({ "keys": kids.iter().map(|k| all[*k].clone()).collect::<Vec<_>>() })
}

/// Serves `jwks` as `GET /jwks.json` (any request, in fact) until the runtime ends, with
/// `Cache-Control: max-age=…` when `max_age_secs` is set; returns the address. Runs on whichever
/// tokio runtime calls it (a multi-thread one or actix's own).
pub async fn serve_jwks(jwks: Value, max_age_secs: Option<u64>) -> SocketAddr {
    let body = jwks.to_string();
    let cache = max_age_secs.map_or(String::new(), |s| format!("cache-control: max-age={s}\r\n"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let (body, cache) = (body.clone(), cache.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{cache}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A stand-in identity provider: serves a JWKS (and discovery) whose keys tests can swap, and
/// counts fetches.
pub struct FakeIdp {
    pub base: String,
    pub fetches: Arc<AtomicUsize>,
    pub up: Arc<AtomicBool>,
    /// While set (and up), the JWKS is answered 200 with a cut-off JSON document.
    pub garbage: Arc<AtomicBool>,
    /// How long userinfo takes to answer, in milliseconds (a slow provider).
    pub userinfo_delay_ms: Arc<AtomicU64>,
    /// Calls to `/introspect`.
    pub introspections: Arc<AtomicUsize>,
}

impl FakeIdp {
    pub fn start(kids: &[&str]) -> FakeIdp {
        let all = fixture_jwks();
        let keys = Arc::new(Mutex::new(
            kids.iter().map(|k| all[*k].clone()).collect::<Vec<_>>(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let garbage = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (k, f, u, b) = (keys.clone(), fetches.clone(), up.clone(), base.clone());
        let g = garbage.clone();
        let userinfo_delay_ms = Arc::new(AtomicU64::new(0));
        let introspections = Arc::new(AtomicUsize::new(0));
        let (delay, calls) = (userinfo_delay_ms.clone(), introspections.clone());
        let server = HttpServer::new(move || {
            let (k, f, u, b, g) = (k.clone(), f.clone(), u.clone(), b.clone(), g.clone());
            let (u2, b2, b3) = (u.clone(), b.clone(), b.clone());
            let (delay, calls) = (delay.clone(), calls.clone());
            App::new()
                .route(
                    "/introspect",
                    web::post().to(move |form: web::Form<std::collections::HashMap<String, String>>| {
                        let (calls, issuer) = (calls.clone(), b3.clone());
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // `opaque-<sub>` is active for the test audience, `opaque-noaud-<sub>`
                            // active without an audience; anything else inactive.
                            let token = form.get("token").map_or("", String::as_str);
                            let answer = if let Some(sub) = token.strip_prefix("opaque-noaud-") {
                                json!({"active": true, "sub": sub, "iss": issuer})
                            } else if let Some(sub) = token.strip_prefix("opaque-") {
                                json!({"active": true, "sub": sub, "iss": issuer, "aud": AUDIENCE})
                            } else {
                                json!({"active": false})
                            };
                            HttpResponse::Ok().json(answer)
                        }
                    }),
                )
                .route(
                    "/jwks.json",
                    web::get().to(move || {
                        let (k, f, u, g) = (k.clone(), f.clone(), u.clone(), g.clone());
                        async move {
                            f.fetch_add(1, Ordering::SeqCst);
                            if !u.load(Ordering::SeqCst) {
                                return HttpResponse::ServiceUnavailable().finish();
                            }
                            if g.load(Ordering::SeqCst) {
                                return HttpResponse::Ok()
                                    .content_type("application/json")
                                    .body(r#"{"keys": [{"kty": "RSA", "n": "#);
                            }
                            let keys = k.lock().unwrap().clone();
                            HttpResponse::Ok().json(json!({ "keys": keys }))
                        }
                    }),
                )
                .route(
                    "/userinfo",
                    web::get().to(move |req: actix_web::HttpRequest| {
                        let delay = delay.load(Ordering::SeqCst);
                        async move {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        // Answers only for a Bearer token, like a real userinfo endpoint.
                        let sub = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .and_then(|t| t.split('.').nth(1))
                            .and_then(|p| {
                                base64::engine::general_purpose::URL_SAFE_NO_PAD
                                    .decode(p)
                                    .ok()
                            })
                            .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
                            .and_then(|c| c["sub"].as_str().map(str::to_owned));
                        let Some(sub) = sub else {
                            return HttpResponse::Unauthorized().finish();
                        };
                        // A token whose subject starts with "other" gets someone else's answer.
                        let sub = if sub.starts_with("other") {
                            "somebody-else".to_owned()
                        } else {
                            sub
                        };
                        HttpResponse::Ok().json(json!({
                            "sub": sub,
                            "email": "looked.up@example.com",
                            "name": "Looked Up",
                        }))
                        }
                    }),
                )
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(move || {
                        let (u, b) = (u2.clone(), b2.clone());
                        async move {
                            if !u.load(Ordering::SeqCst) {
                                return HttpResponse::ServiceUnavailable().finish();
                            }
                            HttpResponse::Ok().json(json!({
                                "issuer": b,
                                "jwks_uri": format!("{b}/jwks.json"),
                                "userinfo_endpoint": format!("{b}/userinfo"),
                            }))
                        }
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        FakeIdp {
            base,
            fetches,
            up,
            garbage,
            userinfo_delay_ms,
            introspections,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.base)
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    pub fn introspections(&self) -> usize {
        self.introspections.load(Ordering::SeqCst)
    }
}

/// A `[[session.jwt]]` table for an issuer whose keys come from `source` (a `jwks_url = ...` or
/// `discovery = true` line); its users get the `idp:` prefix.
pub fn jwks_issuer(issuer: &str, source: &str) -> String {
    format!(
        "\n[[session.jwt]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n{source}\nalgorithms = [\"RS256\", \"ES256\"]\nuser_id_prefix = \"idp:\"\n"
    )
}

/// [`claims`] issued by `idp`.
pub fn idp_claims(idp: &FakeIdp, sub: &str) -> Value {
    let mut c = claims(sub);
    c["iss"] = json!(idp.base);
    c
}
