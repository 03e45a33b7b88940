//! Finding the session credential on a request: `Authorization: Bearer`, else a configured cookie.

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::error::AuthFailure;

/// How the session credential arrived; cookies need the CSRF guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Bearer,
    Cookie,
}

/// A credential found on a request. Borrowed: the token is never copied.
pub struct Credential<'a> {
    pub token: &'a str,
    pub source: CredentialSource,
}

/// Reads the `Authorization: Bearer` token. `Ok(None)` when there is no Authorization header.
pub fn bearer_token(req: &HttpRequest) -> Result<Option<&str>, AuthFailure> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthFailure::Missing);
    }
    Ok(Some(token))
}

/// Finds a cookie's value by exact name, without allocating.
pub fn cookie_value<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The session credential: Bearer first, then any of `cookie_names`.
pub fn find<'a>(
    req: &'a HttpRequest,
    cookie_names: &[String],
) -> Result<Credential<'a>, AuthFailure> {
    if let Some(token) = bearer_token(req)? {
        return Ok(Credential {
            token,
            source: CredentialSource::Bearer,
        });
    }
    cookie_names
        .iter()
        .find_map(|name| cookie_value(req, name))
        .map(|token| Credential {
            token,
            source: CredentialSource::Cookie,
        })
        .ok_or(AuthFailure::Missing)
}
