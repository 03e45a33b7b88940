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

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{BrokerError, apply_rate_limit};
use crate::http::cors::CorsPolicy;
use crate::http::middleware::cors_layer;
use crate::intellia::MintedToken;
use crate::service::Issued;
use routes::Route;

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
    Issued(TokenResponse),
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

fn record_user(user_id: &str) {
    tracing::Span::current().record("user_id", user_id);
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
            .map_err(|e| BrokerError::Internal(std::sync::Arc::new(e)))?,
        expires_in: (minted.expires_at - now).whole_seconds().max(0),
        user_id: minted.user_id.clone(),
        organization_id: minted.organization_id.clone(),
        role: minted.role.clone(),
    })
}

/// The 200 of both token routes.
fn render_issued(issued: &Issued) -> Result<HttpResponse, BrokerError> {
    let body = token_response(&issued.token.minted, OffsetDateTime::now_utc())?;
    let mut response = HttpResponse::Ok();
    response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    response.insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")));
    if let Some(limit) = &issued.limit {
        apply_rate_limit(limit, &mut response);
    }
    Ok(response.json(body))
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

/// A read-only route: `GET` and `HEAD`, 405 otherwise.
fn read_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
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
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .route(web::method(Method::OPTIONS).to(preflight("GET")))
        .default_service(web::to(method_not_allowed("GET, HEAD, OPTIONS")))
}

/// The public routes. The sidecar route is not among them: it is served on its own listener
/// only ([`configure_backend`]), and here it is an unknown path like any other.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(Route::Token.path())
            .wrap(from_fn(cors_layer))
            .route(web::post().to(token::token))
            .route(web::method(Method::OPTIONS).to(preflight("POST")))
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
            .route(web::post().to(backend::backend_token))
            .default_service(web::to(method_not_allowed("POST"))),
    );
}
