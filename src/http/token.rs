//! `POST /v1/token`: the browser path. Identity comes only from the verified session.

use actix_web::{HttpRequest, HttpResponse, web};

use super::cors::CorsPolicy;
use super::request_log::RequestContext;
use super::routes::Route;
use super::{RequestLimits, TokenRouteResponses, read_body, record_user, render_issued};
use crate::error::BrokerError;
use crate::service::{SessionRequest, TokenService};

#[utoipa::path(
    post,
    path = Route::Token.path(),
    tag = "tokens",
    description = "Mints (or returns the cached) chat token for the person of the verified session. The body is ignored except for its size; identity fields in it have no effect.",
    security(("session" = [])),
    responses(
        TokenRouteResponses,
        (status = 401, description = "No, expired, malformed or untrusted session", body = crate::error::Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "Cookie credential from an origin that is not allowed, or a session without a required claim or role", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn token(
    req: HttpRequest,
    payload: web::Payload,
    limits: web::Data<RequestLimits>,
    cors: web::Data<CorsPolicy>,
    service: web::Data<TokenService>,
) -> Result<HttpResponse, BrokerError> {
    // The body carries nothing we use; it is read only to enforce the size limit.
    read_body(&req, payload, limits.max_body_bytes).await?;
    let request = SessionRequest {
        headers: req.headers(),
        origin_allowed: cors.cookie_request_allowed(&req),
        client: RequestContext::client_ip_of(&req),
    };
    let issued = service.issue_for_session(request).await?;
    record_user(issued.user_id());
    render_issued(&issued)
}
