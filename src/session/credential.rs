//! Finding the session credential on a request, and which source it is for: `Authorization:
//! Bearer`, an identity-aware proxy's header, a JWT issuer's cookie, or a site's own session
//! cookies (`[[session.endpoint]]`). The first found wins, in that order.

use std::borrow::Cow;

use actix_web::http::header::{self, HeaderMap, HeaderName};

use crate::config::SessionSettings;
use crate::error::AuthFailure;

/// How the credential arrived. A browser attaches cookies to any request to our origin by
/// itself, and a proxy in front of the site adds its assertion to any request the browser makes
/// through it: such credentials prove nothing about which page asked, so they need the CSRF guard
/// (an allowed `Origin`). A Bearer token is attached by the page's own script, so it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Bearer,
    /// A cookie a `[[session.jwt]]` issuer reads.
    Cookie,
    /// The session cookies of `[[session.endpoint]]` number n, as one `Cookie` header value.
    SiteCookies(usize),
    /// The header of an identity-aware proxy, by its place in [`Sources`]' header list.
    ProxyHeader(usize),
}

/// A credential found on a request. Borrowed from the request where it can be; a site's cookies
/// are put together into the one header they are forwarded as.
#[derive(Debug, Clone)]
pub struct Credential<'a> {
    pub token: Cow<'a, str>,
    pub source: CredentialSource,
}

impl<'a> Credential<'a> {
    /// A token presented as `Authorization: Bearer`.
    pub fn bearer(token: &'a str) -> Credential<'a> {
        Credential {
            token: Cow::Borrowed(token),
            source: CredentialSource::Bearer,
        }
    }

    /// Whether the browser sends this credential on its own (cookies, a proxy's header), so the
    /// request's origin must be checked before it is honoured.
    pub fn is_ambient(&self) -> bool {
        self.source != CredentialSource::Bearer
    }

    /// The proxy header the credential came from, if any.
    pub(crate) fn proxy_header(&self) -> Option<usize> {
        match self.source {
            CredentialSource::ProxyHeader(n) => Some(n),
            _ => None,
        }
    }
}

/// Where the configured session sources expect their credentials, built once.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    jwt_cookies: Vec<String>,
    proxy_headers: Vec<HeaderName>,
    /// Per `[[session.endpoint]]`, its cookie names.
    site_cookies: Vec<Vec<String>>,
}

impl Sources {
    pub(crate) fn new(settings: &SessionSettings) -> Result<Sources, String> {
        let mut proxy_headers: Vec<HeaderName> = Vec::new();
        for (n, jwt) in settings.jwt.iter().enumerate() {
            let Some(name) = &jwt.header else { continue };
            let name = HeaderName::from_bytes(name.as_str().as_bytes())
                .map_err(|_| format!("config key `session.jwt[{n}].header`: not a header name"))?;
            if !proxy_headers.contains(&name) {
                proxy_headers.push(name);
            }
        }
        Ok(Sources {
            jwt_cookies: settings
                .cookie_names()
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            proxy_headers,
            site_cookies: settings
                .endpoint
                .iter()
                .map(|e| e.cookies.iter().map(|c| c.as_str().to_owned()).collect())
                .collect(),
        })
    }

    /// The place of a proxy header in the list (what [`CredentialSource::ProxyHeader`] holds).
    pub(crate) fn header_index(&self, name: &str) -> Option<usize> {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        self.proxy_headers.iter().position(|h| *h == name)
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

/// Every `name=value` pair of the request's `Cookie` headers, in order.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Finds a cookie's value by exact name, without allocating.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_pairs(headers)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The site's session cookies as the one `Cookie` header they are forwarded in: every pair whose
/// name is one of `names`, in the order the browser sent them (twice, if it sent a name twice:
/// the site then decides as it always does), and nothing else.
fn site_cookies(headers: &HeaderMap, names: &[String]) -> Option<String> {
    let mut forwarded = String::new();
    for (name, value) in cookie_pairs(headers) {
        if value.is_empty() || !names.iter().any(|n| n == name) {
            continue;
        }
        if !forwarded.is_empty() {
            forwarded.push_str("; ");
        }
        forwarded.push_str(name);
        forwarded.push('=');
        forwarded.push_str(value);
    }
    (!forwarded.is_empty()).then_some(forwarded)
}

/// The value of a proxy's header. Sent twice, it is refused: a second line is somebody else's.
fn proxy_assertion<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, AuthFailure> {
    let mut values = headers.get_all(name);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?.trim();
    Ok((!value.is_empty()).then_some(value))
}

/// The session credential: Bearer first, then a proxy's header, a JWT issuer's cookie, a site's
/// session cookies.
pub(crate) fn find<'a>(
    headers: &'a HeaderMap,
    sources: &Sources,
) -> Result<Credential<'a>, AuthFailure> {
    if let Some(token) = bearer_token(headers)? {
        return Ok(Credential::bearer(token));
    }
    for (n, name) in sources.proxy_headers.iter().enumerate() {
        if let Some(token) = proxy_assertion(headers, name)? {
            return Ok(Credential {
                token: Cow::Borrowed(token),
                source: CredentialSource::ProxyHeader(n),
            });
        }
    }
    if let Some(token) = sources
        .jwt_cookies
        .iter()
        .find_map(|name| cookie_value(headers, name))
    {
        return Ok(Credential {
            token: Cow::Borrowed(token),
            source: CredentialSource::Cookie,
        });
    }
    for (n, names) in sources.site_cookies.iter().enumerate() {
        if let Some(cookies) = site_cookies(headers, names) {
            return Ok(Credential {
                token: Cow::Owned(cookies),
                source: CredentialSource::SiteCookies(n),
            });
        }
    }
    Err(AuthFailure::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn sources() -> Sources {
        Sources {
            jwt_cookies: vec!["site_session".into()],
            proxy_headers: vec![HeaderName::from_static("cf-access-jwt-assertion")],
            site_cookies: vec![
                vec!["sessionid".into()],
                vec!["connect.sid".into(), "remember".into()],
            ],
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn found(pairs: &[(&'static str, &str)]) -> Result<(String, CredentialSource), AuthFailure> {
        let h = headers(pairs);
        find(&h, &sources()).map(|c| (c.token.into_owned(), c.source))
    }

    #[test]
    fn a_site_gets_its_own_cookies_only() {
        let got = found(&[
            ("cookie", "theme=dark; connect.sid=s%3Aabc.sig; _ga=GA1"),
            ("cookie", "remember=r1; other=x"),
        ]);
        assert_eq!(
            got,
            Ok((
                "connect.sid=s%3Aabc.sig; remember=r1".into(),
                CredentialSource::SiteCookies(1)
            ))
        );
        // A name sent twice (a cookie tossed in from a parent domain) is forwarded twice.
        let got = found(&[("cookie", "sessionid=a; x=1; sessionid=b")]);
        assert_eq!(
            got,
            Ok((
                "sessionid=a; sessionid=b".into(),
                CredentialSource::SiteCookies(0)
            ))
        );
        // A prefix or a different case is another cookie.
        assert_eq!(
            found(&[("cookie", "xsessionid=a; SessionID=b; sessionid=")]),
            Err(AuthFailure::Missing)
        );
    }

    #[test]
    fn the_order_is_bearer_proxy_jwt_cookie_site_cookie() {
        let all = [
            ("cookie", "sessionid=s; site_session=j"),
            ("cf-access-jwt-assertion", "p"),
            ("authorization", "Bearer b"),
        ];
        assert_eq!(found(&all), Ok(("b".into(), CredentialSource::Bearer)));
        assert_eq!(
            found(&all[..2]),
            Ok(("p".into(), CredentialSource::ProxyHeader(0)))
        );
        assert_eq!(found(&all[..1]), Ok(("j".into(), CredentialSource::Cookie)));
        assert!(!Credential::bearer("b").is_ambient());
        for source in [
            CredentialSource::Cookie,
            CredentialSource::SiteCookies(0),
            CredentialSource::ProxyHeader(0),
        ] {
            let c = Credential {
                token: Cow::Borrowed("t"),
                source,
            };
            assert!(c.is_ambient(), "{source:?}");
        }
    }

    #[test]
    fn a_proxy_header_sent_twice_is_refused() {
        assert_eq!(
            found(&[
                ("cf-access-jwt-assertion", "a"),
                ("cf-access-jwt-assertion", "b")
            ]),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            found(&[("cf-access-jwt-assertion", " ")]),
            Err(AuthFailure::Missing)
        );
    }
}
