//! Files the broker serves, compiled in so the image needs nothing beside the binary: the browser
//! client (with an ETag, so widgets revalidate cheaply, and gzip-compressed once at start for
//! clients that ask for it) and the OpenAPI document.

use super::routes::Route;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};
use std::io::Write;

pub struct StaticAsset {
    pub body: &'static str,
    pub content_type: &'static str,
    /// The identity representation's strong tag, `"<hash>"`.
    pub etag: String,
    /// The body gzip-compressed at start, with its own tag: the weak form of the identity tag, as
    /// compressing proxies write it (another encoding of the same content, not the same bytes).
    gzip: Option<(Vec<u8>, String)>,
}

impl StaticAsset {
    pub fn new(body: &'static str, content_type: &'static str) -> StaticAsset {
        let digest = Sha256::digest(body.as_bytes());
        let hex = crate::hex::encode(&digest[..12]);
        StaticAsset {
            body,
            content_type,
            etag: format!("\"{hex}\""),
            gzip: gzip(body.as_bytes()).map(|bytes| (bytes, format!("W/\"{hex}\""))),
        }
    }

    pub fn respond(&self, req: &HttpRequest, cache_control: &'static str) -> HttpResponse {
        let headers = req.headers();
        let gzip = self.gzip.as_ref().filter(|_| {
            accepts_gzip(
                headers
                    .get_all(header::ACCEPT_ENCODING)
                    .filter_map(|v| v.to_str().ok()),
            )
        });
        let etag = gzip.map_or(self.etag.as_str(), |(_, tag)| tag.as_str());
        let not_modified = if_none_match_matches(
            headers
                .get_all(header::IF_NONE_MATCH)
                .filter_map(|v| v.to_str().ok()),
            etag,
        );
        let mut response = if not_modified {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        response
            .insert_header((header::CONTENT_TYPE, self.content_type))
            .insert_header((header::CACHE_CONTROL, cache_control))
            .insert_header((header::ETAG, etag))
            // Caches keep one copy per encoding, and a 304 names the one it revalidates.
            .insert_header((header::VARY, "Accept-Encoding"))
            .insert_header(("X-Content-Type-Options", "nosniff"));
        match gzip {
            _ if not_modified => response.finish(),
            Some((bytes, _)) => response
                .insert_header((header::CONTENT_ENCODING, "gzip"))
                .body(bytes.clone()),
            None => response.body(self.body),
        }
    }
}

/// Compresses at the best level: it runs once per asset, at start.
fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::best(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

/// Whether `Accept-Encoding` (RFC 9110 section 12.5.3) lets us send gzip: `gzip` (or its alias
/// `x-gzip`) with a non-zero weight, or `*` with one when gzip is not named, and not weighed
/// below an explicitly preferred `identity`. No header means no compression.
fn accepts_gzip<'a>(values: impl Iterator<Item = &'a str>) -> bool {
    let (mut gzip, mut star, mut identity) = (None, None, None);
    for item in values.flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut weight = 1000u16;
        for param in parts {
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                // A malformed weight counts as 0: never guess that a client takes gzip.
                weight = qvalue(value.trim()).unwrap_or(0);
            }
        }
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(weight.max(gzip.unwrap_or(0))),
            "*" => star = Some(weight),
            "identity" => identity = Some(weight),
            _ => {}
        }
    }
    let gzip = gzip.or(star).unwrap_or(0);
    gzip > 0 && gzip >= identity.unwrap_or(0)
}

/// An RFC 9110 qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `If-None-Match` uses the weak comparison (RFC 9110 section 13.1.2): `W/"x"` and `"x"` match
/// each other, so a tag a compressing proxy or CDN weakened still revalidates. `*` matches too.
fn if_none_match_matches<'a>(values: impl Iterator<Item = &'a str>, etag: &str) -> bool {
    fn opaque(tag: &str) -> &str {
        tag.trim().trim_start_matches("W/")
    }
    let ours = opaque(etag);
    values
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == ours)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip_ok(value: &str) -> bool {
        accepts_gzip(std::iter::once(value))
    }

    #[test]
    fn accept_encoding_weights_decide_gzip() {
        for yes in [
            "gzip",
            "GZIP",
            "deflate, gzip;q=0.5",
            "br;q=1.0, gzip;q=0.8, *;q=0.1",
            "*",
            "x-gzip",
            "gzip;q=1",
            "gzip ; q=0.001",
            "identity;q=0.5, gzip",
        ] {
            assert!(gzip_ok(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip;q=0.000",
            "*;q=0",
            "gzip;q=0, *",
            "gzip;q=abc",
            "gzip;q=1.5",
            "gzip;q=0.0001",
            "gzip;q=0.5, identity",
            "gzip;q=0.2, identity;q=0.9",
        ] {
            assert!(!gzip_ok(no), "{no:?}");
        }
        assert!(!accepts_gzip(std::iter::empty()), "no header: identity");
        assert!(
            accepts_gzip(["br", "gzip"].into_iter()),
            "several header lines"
        );
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let m = |v: &str, tag: &str| if_none_match_matches(std::iter::once(v), tag);
        assert!(m("\"abc\"", "\"abc\""));
        assert!(m("W/\"abc\"", "\"abc\""), "a weakened tag still matches");
        assert!(m("\"abc\"", "W/\"abc\""));
        assert!(m("\"x\", W/\"abc\"", "\"abc\""));
        assert!(m("*", "\"abc\""));
        assert!(!m("\"abd\"", "\"abc\""));
        assert!(!m("W/\"abcd\"", "\"abc\""));
        assert!(!m("abc", "\"abc\""), "an unquoted value is not the tag");
    }

    #[test]
    fn the_compressed_body_inflates_to_the_asset() {
        let asset = StaticAsset::new(
            "export const x = 1;\n".repeat(200).leak(),
            "text/javascript",
        );
        let (bytes, tag) = asset.gzip.as_ref().expect("compressed");
        assert!(bytes.len() < asset.body.len() / 10);
        assert_eq!(tag, &format!("W/{}", asset.etag));
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
            .expect("valid gzip");
        assert_eq!(out, asset.body);
    }
}
