//! HTTP handlers. Each one reads the request, asks the domain parts (session, limits, cache,
//! Intellia) and turns their answer into a response; errors leave as [`BrokerError`] and are
//! rendered in one place.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::app::AppState;
use crate::cache::Provenance;
use crate::error::{AuthFailure, BrokerError};
use crate::intellia::{AssumeRoleRequest, MintedToken};
use crate::limits::{LimitError, RateLimitHeaders};
use crate::metrics::{LimitLabels, ResultLabels};
use crate::session::{CredentialSource, Identity, bearer_token, valid_user_id};
use crate::telemetry::ClientIp;

/// The token response of both token routes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// The Intellia assume-role token for the chat widget.
    pub token: String,
    /// When Intellia says the token expires (RFC 3339, UTC).
    pub expires_at: String,
    /// Whole seconds until `expiresAt`, by the broker's clock.
    pub expires_in: i64,
    pub user_id: String,
    pub organization_id: String,
    pub role: String,
}

/// Body of the sidecar route.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTokenRequest {
    /// 1–256 printable characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub user_id: String,
    /// A plausible e-mail address (`local@domain.tld`), at most 320 characters.
    #[serde(default)]
    #[schema(
        max_length = 320,
        pattern = r"^[^@\s\u0000-\u001f\u007f-\u009f]{1,64}@[^@\s.\u0000-\u001f\u007f-\u009f]+(\.[^@\s.\u0000-\u001f\u007f-\u009f]+)+$"
    )]
    pub user_email: Option<String>,
    /// At most 256 printable characters.
    #[serde(default)]
    #[schema(max_length = 256, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub user_name: Option<String>,
}

/// Reads a request body up to `limit` bytes; more is a 413 without reading the rest.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, BrokerError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BrokerError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                BrokerError::RequestTimeout
            }
            _ => BrokerError::InvalidRequest("the request body could not be read".into()),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(BrokerError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn rate_limited(state: &AppState, error: LimitError) -> BrokerError {
    match error {
        LimitError::Limited(headers) => {
            state
                .metrics
                .rate_limited
                .get_or_create(&LimitLabels {
                    limit: headers.name,
                })
                .inc();
            BrokerError::RateLimited(headers)
        }
        // Shared limits cannot be checked and the operator chose to refuse rather than guess.
        LimitError::Unavailable => BrokerError::UpstreamUnavailable {
            retry_after_secs: Some(1),
        },
    }
}

fn record_user(user_id: &str) {
    tracing::Span::current().record("user_id", user_id);
}

/// `POST /v1/token`: the browser path. Identity comes only from the verified session.
#[utoipa::path(
    post,
    path = "/v1/token",
    tag = "tokens",
    description = "Mints (or returns the cached) chat token for the person of the verified session. The body is ignored except for its size; identity fields in it have no effect.",
    security(("session" = [])),
    responses(
        (status = 200, description = "A chat token", body = TokenResponse, headers(
            ("Cache-Control" = String, description = "no-store"),
            ("RateLimit" = String, description = "Remaining quota of the tightest limit, e.g. `\"user\";r=4;t=12`"),
            ("RateLimit-Policy" = String, description = "The tightest limit, e.g. `\"user\";q=5;w=60`")
        )),
        (status = 401, description = "No, expired, malformed or untrusted session", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "Cookie credential from an origin that is not allowed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within request_timeout_ms; the connection is closed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over max_body_bytes", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is spent", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"), ("RateLimit" = String, description = "Remaining quota of the tightest limit, e.g. `\"user\";r=4;t=12`"),
            ("RateLimit-Policy" = String, description = "The tightest limit, e.g. `\"user\";q=5;w=60`"))),
        (status = 502, description = "Intellia refused to mint", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Intellia or the session provider is unavailable", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, when known"))),
        (status = 504, description = "Intellia did not answer in time", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, BrokerError> {
    // The body carries nothing we use; it is read only to enforce the size limit.
    read_body(&req, payload, state.settings.server.max_body_bytes).await?;

    let mut limit = None;
    let client_ip = req.extensions().get::<ClientIp>().map(|c| c.0);
    if let Some(ip) = client_ip {
        match state.limits.check_ip(&ip).await {
            Ok(Some(h)) => limit = Some(h),
            Ok(None) => {}
            Err(h) => return Err(rate_limited(&state, h)),
        }
    }

    if state.verifier.is_empty() {
        return Err(BrokerError::Unauthenticated(AuthFailure::Missing));
    }
    let credential = state
        .verifier
        .credential(&req)
        .map_err(BrokerError::Unauthenticated)?;
    if credential.source == CredentialSource::Cookie && !state.cors.cookie_request_allowed(&req) {
        return Err(BrokerError::OriginForbidden);
    }
    let identity = state.verifier.verify(credential.token).await?;
    record_user(&identity.user_id);

    match state.limits.check_user(&identity.user_id).await {
        Ok(Some(h)) => limit = Some(RateLimitHeaders::tightest(limit, h)),
        Ok(None) => {}
        Err(h) => return Err(rate_limited(&state, h)),
    }
    issue(&state, &identity, limit).await
}

/// `POST /v1/backend/token`: the sidecar path. A backend that already knows the user names them.
#[utoipa::path(
    post,
    path = "/v1/backend/token",
    tag = "tokens",
    description = "For a web backend running the broker as a sidecar: names the user in the body. Answers 404 unless `[backend]` is configured.",
    security(("backend" = [])),
    request_body(content = BackendTokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A chat token", body = TokenResponse, headers(
            ("Cache-Control" = String, description = "no-store"),
            ("RateLimit" = String, description = "Remaining quota of the tightest limit, e.g. `\"user\";r=4;t=12`"),
            ("RateLimit-Policy" = String, description = "The tightest limit, e.g. `\"user\";q=5;w=60`")
        )),
        (status = 400, description = "Malformed JSON, a bad field, or not application/json", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong backend secret", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "The backend route is not configured", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within request_timeout_ms; the connection is closed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over max_body_bytes", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is spent", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"), ("RateLimit" = String, description = "Remaining quota of the tightest limit, e.g. `\"user\";r=4;t=12`"),
            ("RateLimit-Policy" = String, description = "The tightest limit, e.g. `\"user\";q=5;w=60`"))),
        (status = 502, description = "Intellia refused to mint", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Intellia is unavailable", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, when known"))),
        (status = 504, description = "Intellia did not answer in time", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn backend_token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, BrokerError> {
    let Some(secret) = &state.backend_secret else {
        return Err(BrokerError::NotFound);
    };
    let presented = bearer_token(&req)
        .map_err(BrokerError::Unauthenticated)?
        .ok_or(BrokerError::Unauthenticated(AuthFailure::Missing))?;
    // Comparing digests keeps the comparison constant-time in the secret's length as well.
    let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if !bool::from(presented.ct_eq(&secret.fingerprint())) {
        return Err(BrokerError::Unauthenticated(
            AuthFailure::WrongBackendSecret,
        ));
    }

    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(BrokerError::InvalidRequest(
            "Content-Type must be application/json".into(),
        ));
    }
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    // serde would accept a positional array for a struct; the contract is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BrokerError::InvalidRequest(
            "the body must be a JSON object".into(),
        ));
    }
    let parsed: BackendTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| BrokerError::InvalidRequest(format!("invalid body: {}", json_error(&e))))?;
    let identity = validate_backend_request(parsed)?;
    record_user(&identity.user_id);

    let limit = match state.limits.check_user(&identity.user_id).await {
        Ok(h) => h,
        Err(h) => return Err(rate_limited(&state, h)),
    };
    issue(&state, &identity, limit).await
}

/// serde's message without the echo of long values: the category and position are enough.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => {
            format!("malformed JSON at line {} column {}", e.line(), e.column())
        }
        Category::Data | Category::Io => {
            let text = e.to_string();
            if text.len() > 200 {
                "a field has the wrong type or an unknown name".into()
            } else {
                text
            }
        }
    }
}

fn validate_backend_request(body: BackendTokenRequest) -> Result<Identity, BrokerError> {
    if !valid_user_id(&body.user_id) {
        return Err(BrokerError::InvalidRequest(
            "userId must be 1-256 printable characters".into(),
        ));
    }
    if let Some(email) = &body.user_email
        && !plausible_email(email)
    {
        return Err(BrokerError::InvalidRequest(
            "userEmail must be a plausible e-mail address of at most 320 characters".into(),
        ));
    }
    if let Some(name) = &body.user_name
        && (name.chars().count() > 256 || name.chars().any(char::is_control))
    {
        return Err(BrokerError::InvalidRequest(
            "userName must be at most 256 printable characters".into(),
        ));
    }
    Ok(Identity {
        user_id: body.user_id,
        email: body.user_email.filter(|e| !e.is_empty()),
        name: body.user_name.filter(|n| !n.is_empty()),
    })
}

/// `local@domain.tld`, no spaces or control characters, at most 320 characters. Deliverability is
/// Intellia's business; this only stops obvious garbage.
pub fn plausible_email(email: &str) -> bool {
    if email.chars().count() > 320 || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.chars().count() <= 64
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// Returns the user's token: cached when fresh enough, else minted (one mint per user at a time).
async fn issue(
    state: &AppState,
    identity: &Identity,
    limit: Option<RateLimitHeaders>,
) -> Result<HttpResponse, BrokerError> {
    let (cached, provenance) = state
        .cache
        .get_or_mint(&identity.user_id, || async {
            state
                .limits
                .check_upstream()
                .await
                .map_err(|e| rate_limited(state, e))?;
            let request = AssumeRoleRequest {
                user_id: identity.user_id.clone(),
                user_email: identity.email.clone(),
                user_name: identity.name.clone(),
            };
            state
                .intellia
                .assume_role(&request)
                .await
                .map_err(BrokerError::from)
        })
        .await?;
    state
        .metrics
        .cache_requests
        .get_or_create(&ResultLabels {
            result: match provenance {
                Provenance::Cached => "hit",
                Provenance::Minted => "miss",
            },
        })
        .inc();

    let body = token_response(&cached.minted, OffsetDateTime::now_utc())?;
    let mut response = HttpResponse::Ok();
    response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    response.insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")));
    if let Some(limit) = limit {
        limit.apply(&mut response);
    }
    Ok(response.json(body))
}

/// The body both token routes answer with, as of `now`.
pub fn token_response(
    minted: &MintedToken,
    now: OffsetDateTime,
) -> Result<TokenResponse, BrokerError> {
    Ok(TokenResponse {
        token: minted.token.expose_secret().to_owned(),
        expires_at: minted
            .expires_at
            .format(&Rfc3339)
            .map_err(|_| BrokerError::Internal)?,
        expires_in: (minted.expires_at - now).whole_seconds().max(0),
        user_id: minted.user_id.clone(),
        organization_id: minted.organization_id.clone(),
        role: minted.role.clone(),
    })
}

/// `OPTIONS` on a CORS route: the preflight answer.
pub fn preflight(
    methods: &'static str,
) -> impl Fn(HttpRequest, web::Data<AppState>) -> std::future::Ready<HttpResponse> + Clone {
    move |req: HttpRequest, state: web::Data<AppState>| {
        let mut response = HttpResponse::NoContent().finish();
        state
            .cors
            .apply_preflight(&req, methods, response.headers_mut());
        std::future::ready(response)
    }
}

/// `GET /healthz`: the process is alive and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", content_type = "application/json", body = serde_json::Value)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: ready to serve token requests. Not ready until session keys are loaded, and not
/// ready as soon as draining starts, so load balancers move traffic away first.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve token requests", content_type = "application/json", body = serde_json::Value),
        (status = 503, description = "Starting (session keys not loaded yet) or draining", content_type = "application/json", body = serde_json::Value)))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let draining = state.is_draining();
    let keys_loaded = state.verifier.keys_loaded();
    let stale = state.stale_secrets();
    let ready = !draining && keys_loaded;
    state.metrics.ready.set(i64::from(ready));
    let status = if draining {
        "draining"
    } else if ready {
        "ready"
    } else {
        "starting"
    };
    let body = serde_json::json!({
        "status": status,
        "checks": {
            "session_keys": if keys_loaded { "loaded" } else { "loading" },
            "secrets": if stale.is_empty() { "ok" } else { "stale" },
        },
        "stale_secrets": stale,
    });
    let mut response = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(body)
}

/// The browser client, served with an ETag so widgets revalidate cheaply.
pub struct StaticAsset {
    pub body: &'static str,
    pub content_type: &'static str,
    pub etag: String,
}

impl StaticAsset {
    pub fn new(body: &'static str, content_type: &'static str) -> StaticAsset {
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        StaticAsset {
            body,
            content_type,
            etag: format!("\"{hex}\""),
        }
    }

    pub fn respond(&self, req: &HttpRequest, cache_control: &'static str) -> HttpResponse {
        let not_modified = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim() == self.etag || t.trim() == "*")
            });
        let mut response = if not_modified {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        response
            .insert_header((header::CONTENT_TYPE, self.content_type))
            .insert_header((header::CACHE_CONTROL, cache_control))
            .insert_header((header::ETAG, self.etag.as_str()))
            .insert_header(("X-Content-Type-Options", "nosniff"));
        if not_modified {
            response.finish()
        } else {
            response.body(self.body)
        }
    }
}

/// `GET /v1/client.js`: the browser client as an ES module.
#[utoipa::path(get, path = "/v1/client.js", tag = "browser",
    responses(
        (status = 200, description = "The ES module", content_type = "text/javascript", body = String,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (If-None-Match)")))]
pub async fn client_js(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state.assets.client_esm.respond(&req, "public, max-age=300")
}

/// `GET /v1/client.global.js`: the browser client for `<script>` tags (defines
/// `window.IntelliaTokenClient`).
#[utoipa::path(get, path = "/v1/client.global.js", tag = "browser",
    responses(
        (status = 200, description = "The script", content_type = "text/javascript", body = String,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (If-None-Match)")))]
pub async fn client_global_js(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .assets
        .client_global
        .respond(&req, "public, max-age=300")
}

/// The OpenAPI document of the public routes.
pub async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.assets.openapi.clone())
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, BrokerError> {
    // Unknown routes and methods answer alike whether or not they exist for other methods.
    if req.method() == Method::OPTIONS {
        return Ok(HttpResponse::build(StatusCode::NO_CONTENT).finish());
    }
    Err(BrokerError::NotFound)
}

/// The 405 of a route, with the `Allow` header RFC 9110 requires.
pub fn method_not_allowed(
    allow: &'static str,
) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    move || {
        use actix_web::ResponseError;
        let mut response = BrokerError::MethodNotAllowed.error_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        std::future::ready(response)
    }
}

/// `GET /metrics` on the admin listener.
pub async fn metrics(state: web::Data<Arc<crate::metrics::Metrics>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_plausibility() {
        for good in ["a@b.co", "john.doe+chat@example.com", "ü@exämple.de"] {
            assert!(plausible_email(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.com",
            "a@.com",
            "a@b.com.",
            "a b@c.com",
            "a@b..com",
            "a\n@b.com",
        ] {
            assert!(!plausible_email(bad), "{bad}");
        }
        assert!(!plausible_email(&format!("{}@example.com", "a".repeat(65))));
    }

    #[test]
    fn backend_body_validation() {
        let ok = validate_backend_request(BackendTokenRequest {
            user_id: "user-1".into(),
            user_email: Some("a@b.co".into()),
            user_name: Some("Ann".into()),
        });
        assert!(ok.is_ok());
        let bad_id = validate_backend_request(BackendTokenRequest {
            user_id: "".into(),
            user_email: None,
            user_name: None,
        });
        assert_eq!(bad_id.unwrap_err().code(), "invalid_request");
        let bad_name = validate_backend_request(BackendTokenRequest {
            user_id: "u".into(),
            user_email: None,
            user_name: Some("x".repeat(257)),
        });
        assert!(bad_name.is_err());
    }
}
