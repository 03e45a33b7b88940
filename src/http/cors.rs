//! CORS for the browser routes and the CSRF guard for cookie sessions.
//!
//! Origins are compared as parsed `scheme://host[:port]` triples, never as substrings. A pattern
//! such as `https://*.example.com` matches one or more DNS labels in front of `example.com` on the
//! same scheme and port; it never matches `example.com` itself nor `evil-example.com`. Only exact
//! origins get `Access-Control-Allow-Credentials`, so cookies are never released to a pattern.

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderMap, HeaderValue};

use crate::config::{CorsSettings, OriginPattern};

// A constant name: looking a header up by `&str` builds a `HeaderName` (an allocation) each time.
const SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

/// Headers a widget may send.
pub(crate) const ALLOWED_HEADERS: &str = "Authorization, Content-Type, X-Request-Id";
/// Headers a widget may read.
pub(crate) const EXPOSED_HEADERS: &str = "RateLimit, RateLimit-Policy, Retry-After, X-Request-Id";

/// How much a request's origin is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginTrust {
    /// No `Origin` header.
    Absent,
    /// Listed exactly: CORS with credentials.
    Exact,
    /// Matched a wildcard pattern: CORS without credentials.
    Pattern,
    /// Anything else, including `null`.
    Denied,
}

#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    patterns: Vec<OriginPattern>,
    max_age: String,
}

impl CorsPolicy {
    pub fn new(settings: &CorsSettings) -> CorsPolicy {
        CorsPolicy {
            patterns: settings.allowed_origins.clone(),
            max_age: settings.max_age_secs.to_string(),
        }
    }

    pub fn classify(&self, origin: Option<&str>) -> OriginTrust {
        let Some(origin) = origin else {
            return OriginTrust::Absent;
        };
        let mut trust = OriginTrust::Denied;
        for pattern in &self.patterns {
            if pattern.matches(origin) {
                match pattern {
                    OriginPattern::Exact(_) => return OriginTrust::Exact,
                    OriginPattern::Wildcard { .. } => trust = OriginTrust::Pattern,
                }
            }
        }
        trust
    }

    /// Adds the CORS response headers for an actual (non-preflight) response. Every response on
    /// a CORS route varies by `Origin`, whether or not it is allowed.
    pub fn apply(&self, request_origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = request_origin else { return };
        let trust = self.classify(origin.to_str().ok());
        if !matches!(trust, OriginTrust::Exact | OriginTrust::Pattern) {
            return;
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if trust == OriginTrust::Exact {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }

    /// Adds the preflight answer's headers. Returns whether the preflight was granted.
    pub fn apply_preflight(
        &self,
        req: &HttpRequest,
        methods: &'static str,
        headers: &mut HeaderMap,
    ) -> bool {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        headers.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        let origin = req.headers().get(header::ORIGIN);
        let trust = self.classify(origin.and_then(|o| o.to_str().ok()));
        let (Some(origin), OriginTrust::Exact | OriginTrust::Pattern) = (origin, trust) else {
            return false;
        };
        let method_ok = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| methods.split(", ").any(|allowed| allowed == m));
        let headers_ok = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|h| h.to_str().ok())
            .is_none_or(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .all(|h| {
                        ALLOWED_HEADERS
                            .split(", ")
                            .any(|allowed| allowed.eq_ignore_ascii_case(h))
                    })
            });
        if !method_ok || !headers_ok {
            return false;
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if trust == OriginTrust::Exact {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        if let Ok(max_age) = HeaderValue::from_str(&self.max_age) {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, max_age);
        }
        true
    }

    /// The CSRF guard for cookie credentials: the request must come from an exactly allowed origin,
    /// or carry no `Origin` and declare itself same-origin through `Sec-Fetch-Site`.
    pub fn cookie_request_allowed(&self, req: &HttpRequest) -> bool {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("null"));
        match self.classify(origin) {
            OriginTrust::Exact => true,
            OriginTrust::Absent => req
                .headers()
                .get(SEC_FETCH_SITE)
                .is_some_and(|v| v.as_bytes() == b"same-origin"),
            OriginTrust::Pattern | OriginTrust::Denied => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str]) -> CorsPolicy {
        CorsPolicy::new(&CorsSettings {
            allowed_origins: origins
                .iter()
                .map(|s| OriginPattern::parse(s).unwrap())
                .collect(),
            max_age_secs: crate::config::Bounded::new::<600>(),
        })
    }

    #[test]
    fn exact_origins_match_exactly() {
        let p = policy(&["https://www.example.com"]);
        assert_eq!(
            p.classify(Some("https://www.example.com")),
            OriginTrust::Exact
        );
        assert_eq!(
            p.classify(Some("http://www.example.com")),
            OriginTrust::Denied
        );
        assert_eq!(
            p.classify(Some("https://www.example.com.evil.io")),
            OriginTrust::Denied
        );
        assert_eq!(
            p.classify(Some("https://www.example.com:8443")),
            OriginTrust::Denied
        );
        assert_eq!(p.classify(Some("null")), OriginTrust::Denied);
        assert_eq!(p.classify(None), OriginTrust::Absent);
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = policy(&["https://*.example.com"]);
        assert_eq!(
            p.classify(Some("https://a.example.com")),
            OriginTrust::Pattern
        );
        assert_eq!(
            p.classify(Some("https://a.b.example.com")),
            OriginTrust::Pattern
        );
        assert_eq!(p.classify(Some("https://example.com")), OriginTrust::Denied);
        assert_eq!(
            p.classify(Some("https://evilexample.com")),
            OriginTrust::Denied
        );
        assert_eq!(
            p.classify(Some("https://a.example.com.evil.io")),
            OriginTrust::Denied
        );
        assert_eq!(
            p.classify(Some("http://a.example.com")),
            OriginTrust::Denied
        );
        assert_eq!(
            p.classify(Some("https://a.example.com:444")),
            OriginTrust::Denied
        );
        assert_eq!(
            p.classify(Some("https://a_b.example.com")),
            OriginTrust::Denied
        );
        assert_eq!(
            p.classify(Some("https://.example.com")),
            OriginTrust::Denied
        );
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in [
            "*",
            "null",
            "https://*",
            "https://*.com",
            "https://a.*.example.com",
            "https://www.example.com/",
            "https://www.example.com/path",
            "ftp://example.com",
            "https://WWW.example.com",
            "www.example.com",
            "https://user@example.com",
            "https://example.com:99999",
        ] {
            assert!(
                OriginPattern::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
        for good in [
            "https://www.example.com",
            "http://localhost:8080",
            "http://127.0.0.1:3000",
            "https://*.example.com",
            "http://[::1]:8080",
        ] {
            assert!(
                OriginPattern::parse(good).is_ok(),
                "{good} should be accepted"
            );
        }
    }
}
