//! Files the broker serves, compiled in so the image needs nothing beside the binary: the browser
//! client (with an ETag, so widgets revalidate cheaply) and the OpenAPI document.

use super::routes::Route;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

pub struct StaticAsset {
    pub body: &'static str,
    pub content_type: &'static str,
    pub etag: String,
}

impl StaticAsset {
    pub fn new(body: &'static str, content_type: &'static str) -> StaticAsset {
        let digest = Sha256::digest(body.as_bytes());
        let hex = crate::hex::encode(&digest[..12]);
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

pub struct Assets {
    pub client_esm: StaticAsset,
    pub client_global: StaticAsset,
    pub openapi: String,
}

impl Assets {
    /// `openapi` is the rendered document (it describes these very routes, so it is built above
    /// them).
    pub fn new(openapi: String) -> Assets {
        Assets {
            client_esm: StaticAsset::new(
                include_str!("../../clients/js/intellia-token-client.js"),
                "text/javascript; charset=utf-8",
            ),
            client_global: StaticAsset::new(
                include_str!("../../clients/js/intellia-token-client.global.js"),
                "text/javascript; charset=utf-8",
            ),
            openapi,
        }
    }
}

/// The browser client as an ES module.
#[utoipa::path(get, path = Route::ClientJs.path(), tag = "browser",
    responses(
        (status = 200, description = "The ES module", content_type = "text/javascript", body = String,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (If-None-Match)")))]
pub(crate) async fn client_js(req: HttpRequest, assets: web::Data<Assets>) -> HttpResponse {
    assets.client_esm.respond(&req, "public, max-age=300")
}

/// The browser client for `<script>` tags (defines `window.IntelliaTokenClient`).
#[utoipa::path(get, path = Route::ClientGlobalJs.path(), tag = "browser",
    responses(
        (status = 200, description = "The script", content_type = "text/javascript", body = String,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (If-None-Match)")))]
pub(crate) async fn client_global_js(req: HttpRequest, assets: web::Data<Assets>) -> HttpResponse {
    assets.client_global.respond(&req, "public, max-age=300")
}

/// The OpenAPI document of the public routes.
pub(crate) async fn openapi(assets: web::Data<Assets>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(assets.openapi.clone())
}
