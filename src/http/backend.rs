//! `POST /v1/backend/token`: the sidecar path. A backend that already knows the user names them.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::request_log::RequestContext;
use super::routes::Route;
use super::{RequestLimits, TokenRouteResponses, read_body, record_user, render_issued};
use crate::error::BrokerError;
use crate::identity::{DisplayName, Email, Identity, UserId};
use crate::service::TokenService;
use crate::session::credential::bearer_token;

// The document states the identity types' own rules (`schema_with`), so the two cannot differ.
/// Body of the sidecar route.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BackendTokenRequest {
    #[schema(schema_with = UserId::schema)]
    user_id: String,
    #[serde(default)]
    #[schema(schema_with = Email::schema)]
    user_email: Option<String>,
    #[serde(default)]
    #[schema(schema_with = DisplayName::schema)]
    user_name: Option<String>,
}

#[utoipa::path(
    post,
    path = Route::BackendToken.path(),
    tag = "tokens",
    description = "For a web backend running the broker as a sidecar: names the user in the body. Served only on the backend listener (`backend.listen`, default `127.0.0.1:8081`), never on the public one, where this path is an unknown route (404). Without `[backend]` there is no backend listener. Wrong secrets are limited per client address (`backend.max_failures_per_minute`); the right secret is never refused by that limit.",
    security(("backend" = [])),
    request_body(content = BackendTokenRequest, content_type = "application/json"),
    responses(
        TokenRouteResponses,
        (status = 400, description = "Malformed JSON, a bad field, or not application/json", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong backend secret", body = crate::error::Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "Not the backend listener (the public listener never serves this route)", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn backend_token(
    req: HttpRequest,
    payload: web::Payload,
    limits: web::Data<RequestLimits>,
    service: web::Data<TokenService>,
) -> Result<HttpResponse, BrokerError> {
    let client = RequestContext::client_ip_of(&req);
    // Read only once the backend's credential is accepted.
    let body = identity_in_body(&req, payload, limits.max_body_bytes);
    let issued = service
        .issue_for_backend(bearer_token(req.headers()), client, body)
        .await?;
    record_user(issued.user_id());
    render_issued(&issued)
}

/// The identity a sidecar names in the body: a JSON object, sent as `application/json`.
async fn identity_in_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Identity, BrokerError> {
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
    let body = read_body(req, payload, limit).await?;
    // serde would accept a positional array for a struct; the contract is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BrokerError::InvalidRequest(
            "the body must be a JSON object".into(),
        ));
    }
    let parsed: BackendTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| BrokerError::InvalidRequest(format!("invalid body: {}", json_error(&e))))?;
    identity_of(parsed)
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

/// The identity a sidecar names. An empty name means none; an empty e-mail is not an address.
fn identity_of(body: BackendTokenRequest) -> Result<Identity, BrokerError> {
    let invalid =
        |field: &str, rule: String| BrokerError::InvalidRequest(format!("{field} must be {rule}"));
    let user_id = UserId::parse(body.user_id).ok_or_else(|| invalid("userId", UserId::rule()))?;
    let email = match body.user_email {
        None => None,
        Some(email) => {
            Some(Email::parse(email).ok_or_else(|| invalid("userEmail", Email::rule()))?)
        }
    };
    let name = match body.user_name {
        None => None,
        Some(name) if name.is_empty() => None,
        Some(name) => {
            Some(DisplayName::parse(name).ok_or_else(|| invalid("userName", DisplayName::rule()))?)
        }
    };
    Ok(Identity {
        user_id,
        email,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_body_errors_name_the_field_and_its_rule() {
        let detail = |body: BackendTokenRequest| identity_of(body).unwrap_err().to_string();
        assert_eq!(
            detail(BackendTokenRequest {
                user_id: String::new(),
                user_email: None,
                user_name: None,
            }),
            "userId must be 1-256 printable characters"
        );
        assert_eq!(
            detail(BackendTokenRequest {
                user_id: "u".into(),
                user_email: Some("nope".into()),
                user_name: None,
            }),
            "userEmail must be a plausible e-mail address of at most 320 characters"
        );
        assert_eq!(
            detail(BackendTokenRequest {
                user_id: "u".into(),
                user_email: None,
                user_name: Some("\u{7}".into()),
            }),
            "userName must be at most 256 printable characters"
        );
    }

    #[test]
    fn backend_body_validation() {
        let ok = identity_of(BackendTokenRequest {
            user_id: "user-1".into(),
            user_email: Some("a@b.co".into()),
            user_name: Some("Ann".into()),
        });
        assert!(ok.is_ok());
        let bad_id = identity_of(BackendTokenRequest {
            user_id: "".into(),
            user_email: None,
            user_name: None,
        });
        assert_eq!(bad_id.unwrap_err().code(), "invalid_request");
        let bad_name = identity_of(BackendTokenRequest {
            user_id: "u".into(),
            user_email: None,
            user_name: Some("x".repeat(257)),
        });
        assert!(bad_name.is_err());
        let no_name = identity_of(BackendTokenRequest {
            user_id: "u".into(),
            user_email: None,
            user_name: Some(String::new()),
        });
        assert_eq!(no_name.unwrap().name, None);
    }
}
