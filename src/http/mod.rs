//! HTTP handlers, by route family. Each one parses the request, authenticates it, calls the
//! domain parts and renders their answer; errors leave as [`BrokerError`] and are rendered in
//! one place (`error.rs`).

pub(crate) mod assets;
pub(crate) mod backend;
pub(crate) mod client_ip;
pub(crate) mod connection;
pub(crate) mod cors;
pub(crate) mod middleware;
pub(crate) mod openapi;
pub(crate) mod operations;
pub(crate) mod request_log;
pub(crate) mod routes;
pub(crate) mod token;

use std::borrow::Cow;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use secrecy::ExposeSecret;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{BrokerError, apply_rate_limit};
use crate::http::cors::CorsPolicy;
use crate::http::middleware::cors_layer;
use crate::intellia::MintedToken;
use crate::service::Issued;
use routes::Route;

// Rendered straight from the cached token: the strings are borrowed, the instant is formatted on
// the stack, and the JSON is written once.
/// The token response of both token routes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse<'a> {
    /// The Intellia assume-role token for the chat widget.
    #[schema(value_type = String)]
    pub token: Cow<'a, str>,
    /// When Intellia says the token expires (RFC 3339, UTC).
    #[schema(value_type = String)]
    pub expires_at: Rfc3339,
    /// Whole seconds until `expiresAt`, by the broker's clock.
    pub expires_in: i64,
    #[schema(value_type = String)]
    pub user_id: Cow<'a, str>,
    #[schema(value_type = String)]
    pub organization_id: Cow<'a, str>,
    #[schema(value_type = String)]
    pub role: Cow<'a, str>,
}

/// An instant as RFC 3339 text in UTC, held inline: the longest form
/// (`9999-12-31T23:59:59.999999999Z`) is 30 bytes.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    text: [u8; 32],
    len: u8,
}

impl Rfc3339 {
    fn format(instant: OffsetDateTime) -> Option<Rfc3339> {
        let mut text = [0u8; 32];
        let mut rest = &mut text[..];
        let written = instant
            .to_offset(time::UtcOffset::UTC)
            .format_into(&mut rest, &time::format_description::well_known::Rfc3339)
            .ok()?;
        Some(Rfc3339 {
            text,
            len: u8::try_from(written).ok()?,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only the formatter writes `text`, and it writes ASCII.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Rfc3339 {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        let instant = OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        Rfc3339::format(instant).ok_or_else(|| serde::de::Error::custom("out of range"))
    }
}

/// Limits on what a request may send, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
}

/// The answers both token routes share, documented once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum TokenRouteResponses {
    /// A chat token
    #[response(status = 200, headers(
        ("Cache-Control" = String, description = "no-store"),
        ("RateLimit" = String, description = "Remaining quota of the tightest limit, e.g. `\"user\";r=4;t=12`"),
        ("RateLimit-Policy" = String, description = "The tightest limit, e.g. `\"user\";q=5;w=60`")
    ))]
    Issued(TokenResponse<'static>),
    /// The body did not arrive within request_timeout_ms; the connection is closed
    #[response(status = 408, content_type = "application/problem+json")]
    RequestTimeout(crate::error::Problem),
    /// Body over max_body_bytes
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(crate::error::Problem),
    /// A rate limit is spent
    #[response(status = 429, content_type = "application/problem+json", headers(
        ("Retry-After" = u64, description = "Seconds to wait"),
        ("RateLimit" = String, description = "Remaining quota of the tightest limit, e.g. `\"user\";r=0;t=12`"),
        ("RateLimit-Policy" = String, description = "The tightest limit, e.g. `\"user\";q=5;w=60`")
    ))]
    RateLimited(crate::error::Problem),
    /// Intellia refused to mint
    #[response(status = 502, content_type = "application/problem+json")]
    UpstreamRejected(crate::error::Problem),
    /// Intellia (or, on the browser route, the session provider) is unavailable, or shared limits cannot be checked
    #[response(status = 503, content_type = "application/problem+json", headers(
        ("Retry-After" = u64, description = "Seconds to wait, when known")
    ))]
    UpstreamUnavailable(crate::error::Problem),
    /// Intellia did not answer in time
    #[response(status = 504, content_type = "application/problem+json")]
    UpstreamTimeout(crate::error::Problem),
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

/// Names the user in the request's log line and on its server span.
fn record_user(user_id: &str) {
    tracing::Span::current().record("user_id", user_id);
    crate::telemetry::traces::record_user(user_id);
}

/// The body both token routes answer with, as of `now`.
pub fn token_response(
    minted: &MintedToken,
    now: OffsetDateTime,
) -> Result<TokenResponse<'_>, BrokerError> {
    // The parser keeps only instants of years 0 to 9999 in UTC, which RFC 3339 can write.
    let expires_at = Rfc3339::format(minted.expires_at).ok_or_else(|| {
        BrokerError::Internal(std::sync::Arc::new(std::io::Error::other(
            "an expiry RFC 3339 cannot write",
        )))
    })?;
    Ok(TokenResponse {
        token: Cow::Borrowed(minted.token.expose_secret()),
        expires_at,
        expires_in: (minted.expires_at - now).whole_seconds().max(0),
        user_id: Cow::Borrowed(&minted.user_id),
        organization_id: Cow::Borrowed(&minted.organization_id),
        role: Cow::Borrowed(&minted.role),
    })
}

/// The 200 of both token routes.
fn render_issued(issued: &Issued) -> Result<HttpResponse, BrokerError> {
    let minted = &issued.token.minted;
    let body = token_response(minted, OffsetDateTime::now_utc())?;
    // Sized for the token plus the other members, so the JSON is written without regrowing.
    let mut json = Vec::with_capacity(minted.token.expose_secret().len() + 256);
    serde_json::to_writer(&mut json, &body)
        .map_err(|e| BrokerError::Internal(std::sync::Arc::new(e)))?;
    let mut response = HttpResponse::Ok();
    response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    response.insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")));
    response.insert_header((
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ));
    if let Some(limit) = &issued.limit {
        apply_rate_limit(limit, &mut response);
    }
    Ok(response.body(json))
}

/// `OPTIONS` on a CORS route: the preflight answer.
fn preflight(
    methods: &'static str,
) -> impl Fn(HttpRequest, web::Data<CorsPolicy>) -> std::future::Ready<HttpResponse> + Clone {
    move |req: HttpRequest, cors: web::Data<CorsPolicy>| {
        let mut response = HttpResponse::NoContent().finish();
        cors.apply_preflight(&req, methods, response.headers_mut());
        std::future::ready(response)
    }
}

pub(crate) async fn not_found(req: HttpRequest) -> Result<HttpResponse, BrokerError> {
    // Unknown routes and methods answer alike whether or not they exist for other methods.
    if req.method() == Method::OPTIONS {
        return Ok(HttpResponse::build(StatusCode::NO_CONTENT).finish());
    }
    Err(BrokerError::NotFound)
}

/// The 405 of a route, with the `Allow` header RFC 9110 requires.
fn method_not_allowed(
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

/// A route for one method. actix's own `web::get()` and friends record every method they were
/// tried with in the request (an allocation or two per request) for an `Allow` header; every
/// resource here answers 405 with its own `Allow`, so a plain comparison is all a guard needs.
pub(crate) fn on(method: Method) -> actix_web::Route {
    web::route().guard(IsMethod(method))
}

struct IsMethod(Method);

impl actix_web::guard::Guard for IsMethod {
    fn check(&self, ctx: &actix_web::guard::GuardContext<'_>) -> bool {
        ctx.head().method == self.0
    }
}

/// A read-only route: `GET` and `HEAD`, 405 otherwise.
fn read_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(on(Method::GET).to(handler.clone()))
        .route(on(Method::HEAD).to(handler))
        .default_service(web::to(method_not_allowed("GET, HEAD")))
}

/// A file other origins' pages load: `GET`/`HEAD` with CORS and its preflight.
fn cross_origin_asset<F, Args>(
    path: &str,
    handler: F,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
>
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .wrap(from_fn(cors_layer))
        .route(on(Method::GET).to(handler.clone()))
        .route(on(Method::HEAD).to(handler))
        .route(on(Method::OPTIONS).to(preflight("GET")))
        .default_service(web::to(method_not_allowed("GET, HEAD, OPTIONS")))
}

/// The public routes. The sidecar route is not among them: it is served on its own listener
/// only ([`configure_backend`]), and here it is an unknown path like any other.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(Route::Token.path())
            .wrap(from_fn(cors_layer))
            .route(on(Method::POST).to(token::token))
            .route(on(Method::OPTIONS).to(preflight("POST")))
            .default_service(web::to(method_not_allowed("POST, OPTIONS"))),
    );
    cfg.service(cross_origin_asset(
        Route::ClientJs.path(),
        assets::client_js,
    ));
    cfg.service(cross_origin_asset(
        Route::ClientGlobalJs.path(),
        assets::client_global_js,
    ));
    cfg.service(read_only(Route::Healthz.path(), operations::healthz));
    cfg.service(read_only(Route::Readyz.path(), operations::readyz));
    cfg.service(read_only(Route::OpenApi.path(), assets::openapi));
}

/// The backend listener's one route (`backend.listen`).
pub(crate) fn configure_backend(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(Route::BackendToken.path())
            .route(on(Method::POST).to(backend::backend_token))
            .default_service(web::to(method_not_allowed("POST"))),
    );
}
