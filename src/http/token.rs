//! `POST /v1/token`: the browser path. Identity comes only from the verified session.

use super::routes::Route;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use super::request_log::ClientIp;
use super::{RequestLimits, TokenRouteResponses, read_body, record_user, render_issued};
use crate::error::{AuthFailure, BrokerError};
use crate::http::cors::CorsPolicy;
use crate::service::{IpCharge, TokenService};
use crate::session::SessionVerifier;
use crate::session::credential::{self, CredentialSource};

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
pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    limits: web::Data<RequestLimits>,
    verifier: web::Data<SessionVerifier>,
    cors: web::Data<CorsPolicy>,
    service: web::Data<TokenService>,
) -> Result<HttpResponse, BrokerError> {
    // The body carries nothing we use; it is read only to enforce the size limit.
    read_body(&req, payload, limits.max_body_bytes).await?;
    let client_ip = req.extensions().get::<ClientIp>().map(|c| c.0);
    let credential = match credential::find(&req, verifier.cookie_names()) {
        Ok(_) if verifier.is_empty() => Err(AuthFailure::Missing),
        found => found,
    };
    let credential = match credential {
        Ok(credential) => credential,
        Err(failure) => {
            let refused = BrokerError::Unauthenticated(failure);
            return Err(service.refuse(client_ip, refused).await);
        }
    };
    if credential.source == CredentialSource::Cookie && !cors.cookie_request_allowed(&req) {
        return Err(service
            .refuse(client_ip, BrokerError::OriginForbidden)
            .await);
    }
    // A session verified before is charged with the user in one decision; a new one is charged
    // to its address first, since verifying it may cost the identity provider a request.
    let (identity, ip) = match verifier.remembered(credential.token).await {
        Some(identity) => (
            identity,
            client_ip.map_or(IpCharge::None, IpCharge::Pending),
        ),
        None => {
            let charged = service.charge_ip(client_ip).await?;
            (
                verifier.verify(credential.token).await?,
                IpCharge::Charged(charged),
            )
        }
    };
    record_user(identity.user_id.as_str());
    render_issued(&service.issue(&identity, ip).await?)
}
