//! Finding the session credential on a request: `Authorization: Bearer`, else a configured cookie.

use actix_web::http::header::{self, HeaderMap};

use crate::error::AuthFailure;

/// How the credential arrived. A browser attaches cookies to any request to our origin by
/// itself, so a credential it sends that way proves nothing about which page asked: such
/// credentials need the CSRF guard (an allowed `Origin`). A Bearer token is attached by the
/// page's own script, so it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Bearer,
    Cookie,
}

/// A credential found on a request. Borrowed: the token is never copied.
#[derive(Debug, Clone, Copy)]
pub struct Credential<'a> {
    pub token: &'a str,
    pub source: CredentialSource,
}

impl<'a> Credential<'a> {
    /// A token presented as `Authorization: Bearer`.
    pub fn bearer(token: &'a str) -> Credential<'a> {
        Credential {
            token,
            source: CredentialSource::Bearer,
        }
    }

    /// Whether the browser sends this credential on its own, so the request's origin must be
    /// checked before it is honoured.
    pub fn is_ambient(&self) -> bool {
        self.source != CredentialSource::Bearer
    }
}

/// Reads the `Authorization: Bearer` token. `Ok(None)` when there is no Authorization header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
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
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The session credential: Bearer first, then any of `cookie_names`.
pub(crate) fn find<'a>(
    headers: &'a HeaderMap,
    cookie_names: &[String],
) -> Result<Credential<'a>, AuthFailure> {
    if let Some(token) = bearer_token(headers)? {
        return Ok(Credential::bearer(token));
    }
    cookie_names
        .iter()
        .find_map(|name| cookie_value(headers, name))
        .map(|token| Credential {
            token,
            source: CredentialSource::Cookie,
        })
        .ok_or(AuthFailure::Missing)
}
