//! The OpenAPI document, generated from the handlers' annotations and the response types, served
//! at `GET /openapi.json` and kept rendered in the repository (`openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
                        "The site's session token (JWT or opaque), or, from an allowed Origin: an identity-aware proxy's assertion header, a configured session cookie, or a site's own session cookies ([[session.endpoint]])",
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
        crate::http::token::token,
        crate::http::backend::backend_token,
        crate::http::operations::healthz,
        crate::http::operations::readyz,
        crate::http::assets::client_js,
        crate::http::assets::client_global_js,
    ),
    components(schemas(
        crate::http::TokenResponse,
        crate::http::backend::BackendTokenRequest,
        crate::error::Problem,
        crate::error::ErrorCode
    )),
    modifiers(&Security)
)]
pub(crate) struct ApiDoc;

/// The document as pretty JSON with a trailing newline, as it is kept in the repository.
pub(crate) fn document_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}
