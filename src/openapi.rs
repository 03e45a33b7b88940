//! The OpenAPI document, generated from the handlers' annotations and the response types, served
//! at `GET /openapi.json` and kept rendered in the repository (`openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// RFC 9457 problem details with the broker's stable `code`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// Always `about:blank`.
    #[schema(example = "about:blank")]
    r#type: String,
    #[schema(example = "Too Many Requests")]
    title: String,
    #[schema(example = 429)]
    status: u16,
    /// Stable machine-readable error code.
    #[schema(example = "rate_limited")]
    code: ErrorCode,
    /// Human-readable explanation; never contains secrets, tokens or upstream bodies.
    detail: String,
}

/// Every error code the broker emits.
#[derive(ToSchema)]
#[allow(dead_code, non_camel_case_types)]
pub enum ErrorCode {
    invalid_request,
    unauthenticated,
    origin_forbidden,
    forbidden,
    payload_too_large,
    request_timeout,
    rate_limited,
    upstream_rejected,
    upstream_unavailable,
    upstream_timeout,
    not_found,
    method_not_allowed,
    internal_error,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The site's session token (JWT), or the configured session cookie",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "backend",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The backend secret of the sidecar route"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "intellia-token-broker",
        description = "Mints short-lived Intellia assume-role chat tokens for a site's signed-in users.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::routes::token,
        crate::routes::backend_token,
        crate::routes::healthz,
        crate::routes::readyz,
        crate::routes::client_js,
        crate::routes::client_global_js,
    ),
    components(schemas(
        crate::routes::TokenResponse,
        crate::routes::BackendTokenRequest,
        Problem,
        ErrorCode
    )),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline, as it is kept in the repository.
pub fn document_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}
