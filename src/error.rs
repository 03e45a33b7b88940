//! The broker's one domain error type and its single mapping to HTTP.
//!
//! `Display` is what a client may read: it never carries the API key, a session token, an upstream
//! body or an internal error chain. Anything richer goes to the log through `Debug` at the point
//! where the error is created.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use serde::Serialize;

use crate::limits::RateLimitStatus;

/// Why the caller's credential was not accepted. Kept coarse on purpose: a client learns that its
/// session was refused, and the log learns why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    TooLarge,
    UnsupportedAlgorithm,
    UntrustedIssuer,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    MissingClaim,
    InvalidUserId,
    Inactive,
    /// A token of an issuer whose tokens arrive in a proxy's header, sent anywhere else (or a
    /// token of another issuer in that header).
    WrongPlace,
    WrongBackendSecret,
}

impl AuthFailure {
    /// A short, client-safe sentence.
    pub fn describe(self) -> &'static str {
        match self {
            AuthFailure::Missing => "no session credential was presented",
            AuthFailure::Malformed => "the session token is malformed",
            AuthFailure::TooLarge => "the session token is too large",
            AuthFailure::UnsupportedAlgorithm => "the session token's algorithm is not accepted",
            AuthFailure::UntrustedIssuer => "the session token's issuer is not trusted",
            AuthFailure::UnknownKey => "the session token is signed with an unknown key",
            AuthFailure::BadSignature => "the session token's signature is invalid",
            AuthFailure::Expired => "the session has expired",
            AuthFailure::NotYetValid => "the session token is not valid yet",
            AuthFailure::WrongAudience => "the session token is meant for another audience",
            AuthFailure::MissingClaim => "the session token lacks a required claim",
            AuthFailure::InvalidUserId => "the session's user id is not acceptable",
            AuthFailure::Inactive => "the session is no longer active",
            AuthFailure::WrongPlace => {
                "the session token was not sent where its issuer's tokens are read"
            }
            AuthFailure::WrongBackendSecret => "the backend credential is not valid",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{}", .0.describe())]
    Unauthenticated(AuthFailure),
    #[error("credentials sent by cookie are only accepted from an allowed origin")]
    OriginForbidden,
    #[error("{0}")]
    Forbidden(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("the {} rate limit is spent; retry in {} s", .0.name, .0.retry_after_secs)]
    RateLimited(RateLimitStatus),
    #[error("Intellia refused to mint a token (HTTP {status})")]
    UpstreamRejected { status: u16 },
    #[error("Intellia returned a response the broker could not use")]
    UpstreamInvalid,
    #[error("Intellia is unavailable; try again later")]
    UpstreamUnavailable { retry_after_secs: Option<u64> },
    #[error("Intellia did not answer in time")]
    UpstreamTimeout,
    #[error("the session provider is unavailable; try again later")]
    SessionProviderUnavailable,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A bug or an impossible state. The cause is logged once, when the response is built, and
    /// never sent.
    #[error("internal error")]
    Internal(Arc<dyn std::error::Error + Send + Sync>),
}

/// Defines [`ErrorCode`] once: its variants, their wire names, their HTTP status and the list of
/// all of them, so the problem body, the OpenAPI document and the fuzz oracle cannot drift apart.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $status:ident;)*) => {
        /// The stable `code` of every error the broker answers with: the public contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the contract's table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// Each code has exactly one status, so a client may rely on either.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

error_codes! {
    /// Malformed JSON, a bad field, or the wrong content type on a body.
    InvalidRequest = "invalid_request", BAD_REQUEST;
    /// No, expired, malformed or untrusted session or backend credential.
    Unauthenticated = "unauthenticated", UNAUTHORIZED;
    /// A cookie (or proxy-header) credential from an origin that is not allowed.
    OriginForbidden = "origin_forbidden", FORBIDDEN;
    /// A verified session that lacks a required claim or role.
    Forbidden = "forbidden", FORBIDDEN;
    /// A body over `server.max_body_bytes`.
    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE;
    /// The body did not arrive within `server.request_timeout_ms`.
    RequestTimeout = "request_timeout", REQUEST_TIMEOUT;
    /// A rate limit is spent.
    RateLimited = "rate_limited", TOO_MANY_REQUESTS;
    /// Intellia refused to mint, or answered with something unusable.
    UpstreamRejected = "upstream_rejected", BAD_GATEWAY;
    /// Intellia or the session provider is unavailable, or shared limits cannot be checked.
    UpstreamUnavailable = "upstream_unavailable", SERVICE_UNAVAILABLE;
    /// Intellia did not answer in time.
    UpstreamTimeout = "upstream_timeout", GATEWAY_TIMEOUT;
    /// No such route.
    NotFound = "not_found", NOT_FOUND;
    /// The route exists, the method does not.
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    /// A bug; the cause is in the log, never in the answer.
    InternalError = "internal_error", INTERNAL_SERVER_ERROR;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl BrokerError {
    /// The stable, documented error code of the public contract; the status follows from it.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            BrokerError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            BrokerError::OriginForbidden => ErrorCode::OriginForbidden,
            BrokerError::Forbidden(_) => ErrorCode::Forbidden,
            BrokerError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            BrokerError::RequestTimeout => ErrorCode::RequestTimeout,
            BrokerError::RateLimited(_) => ErrorCode::RateLimited,
            BrokerError::UpstreamRejected { .. } | BrokerError::UpstreamInvalid => {
                ErrorCode::UpstreamRejected
            }
            BrokerError::UpstreamUnavailable { .. } | BrokerError::SessionProviderUnavailable => {
                ErrorCode::UpstreamUnavailable
            }
            BrokerError::UpstreamTimeout => ErrorCode::UpstreamTimeout,
            BrokerError::NotFound => ErrorCode::NotFound,
            BrokerError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            BrokerError::Internal(_) => ErrorCode::InternalError,
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for a limit, e.g.
/// `"user";q=5;w=60` and `"user";r=4;t=12`. Written on the stack: they go out on every token
/// response.
pub(crate) fn apply_rate_limit(status: &RateLimitStatus, response: &mut HttpResponseBuilder) {
    let item = |first: (&str, u64), second: (&str, u64)| {
        let mut text = HeaderText::default();
        text.push(b"\"");
        text.push(status.name.as_bytes());
        text.push(b"\";");
        for (key, value) in [first, second] {
            text.push(key.as_bytes());
            text.push(itoa::Buffer::new().format(value).as_bytes());
        }
        text.value()
    };
    let policy = item(
        ("q=", u64::from(status.quota)),
        (";w=", u64::from(status.window)),
    );
    let current = item(
        ("r=", u64::from(status.remaining)),
        (";t=", status.reset_secs),
    );
    if let (Some(policy), Some(current)) = (policy, current) {
        response.insert_header((RATELIMIT_POLICY, policy));
        response.insert_header((RATELIMIT, current));
    }
}

const RATELIMIT_POLICY: header::HeaderName = header::HeaderName::from_static("ratelimit-policy");
const RATELIMIT: header::HeaderName = header::HeaderName::from_static("ratelimit");

/// A header value assembled in a fixed buffer; longer text than a limit's name and two integers
/// need is cut off, and then no header is sent rather than a wrong one.
struct HeaderText {
    bytes: [u8; 96],
    len: usize,
    overflow: bool,
}

impl Default for HeaderText {
    fn default() -> Self {
        HeaderText {
            bytes: [0; 96],
            len: 0,
            overflow: false,
        }
    }
}

impl HeaderText {
    fn push(&mut self, part: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + part.len()) {
            Some(room) => {
                room.copy_from_slice(part);
                self.len += part.len();
            }
            None => self.overflow = true,
        }
    }

    fn value(&self) -> Option<HeaderValue> {
        if self.overflow {
            return None;
        }
        HeaderValue::from_bytes(&self.bytes[..self.len]).ok()
    }
}

/// RFC 9457 problem details with the broker's stable `code`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    kind: &'static str,
    #[schema(example = "Too Many Requests")]
    title: &'static str,
    #[schema(example = 429)]
    status: u16,
    /// Stable machine-readable error code.
    #[schema(example = "rate_limited")]
    code: ErrorCode,
    /// Human-readable explanation; never contains secrets, tokens or upstream bodies.
    detail: String,
}

/// The `code` of an error response, left on the response for the request log and metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutcomeCode(pub ErrorCode);

impl OutcomeCode {
    /// The code an error response carries; `None` for a response no `BrokerError` built.
    pub(crate) fn of<B>(response: &actix_web::HttpResponse<B>) -> Option<&'static str> {
        response
            .extensions()
            .get::<OutcomeCode>()
            .map(|c| c.0.as_str())
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

impl ResponseError for BrokerError {
    fn status_code(&self) -> StatusCode {
        self.code().status()
    }

    fn error_response(&self) -> HttpResponse {
        if let BrokerError::Internal(source) = self {
            tracing::error!(error = %source, "internal error");
        }
        let code = self.code();
        let status = code.status();
        let body = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail: self.to_string(),
        };
        let mut response = HttpResponse::build(status);
        response
            .content_type(PROBLEM_JSON)
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        match self {
            BrokerError::Unauthenticated(_) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"intellia-token-broker\""),
                ));
            }
            BrokerError::RateLimited(limit) => {
                apply_rate_limit(limit, &mut response);
                response.insert_header((header::RETRY_AFTER, limit.retry_after_secs));
            }
            BrokerError::UpstreamUnavailable {
                retry_after_secs: Some(secs),
            } => {
                response.insert_header((header::RETRY_AFTER, *secs));
            }
            BrokerError::SessionProviderUnavailable => {
                response.insert_header((header::RETRY_AFTER, 1u64));
            }
            // The rest of a body that is trickling in is not worth waiting for.
            BrokerError::RequestTimeout => {
                response.force_close();
            }
            _ => {}
        }
        // Serializing a struct of strings and integers cannot fail; fall back to an empty body
        // rather than panic if it ever did.
        let mut response = response.body(serde_json::to_vec(&body).unwrap_or_default());
        // The request log and metrics read the outcome code from here.
        response.extensions_mut().insert(OutcomeCode(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(err: &BrokerError) -> serde_json::Value {
        let resp = err.error_response();
        let bytes = resp.into_body().try_into_bytes().unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn every_code_is_listed_once_with_its_wire_name() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} listed twice");
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(serde_json::Value::from(code.as_str()))
            );
        }
        assert_eq!(ErrorCode::ALL.len(), 13);
    }

    #[test]
    fn problem_body_has_stable_code_and_status() {
        let err = BrokerError::UpstreamRejected { status: 403 };
        let body = body_of(&err);
        assert_eq!(body["code"], "upstream_rejected");
        assert_eq!(body["status"], 502);
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Bad Gateway");
    }

    #[test]
    fn rate_limit_header_syntax_follows_the_draft() {
        let h = RateLimitStatus {
            name: "user",
            quota: 5,
            window: 60,
            remaining: 0,
            reset_secs: 12,
            retry_after_secs: 12,
        };
        let resp = BrokerError::RateLimited(h).error_response();
        assert_eq!(
            resp.headers().get("RateLimit-Policy").unwrap(),
            "\"user\";q=5;w=60"
        );
        assert_eq!(
            resp.headers().get("RateLimit").unwrap(),
            "\"user\";r=0;t=12"
        );
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "12");
    }

    #[test]
    fn unauthenticated_carries_www_authenticate() {
        let resp = BrokerError::Unauthenticated(AuthFailure::Expired).error_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(
            resp.headers()
                .get(header::WWW_AUTHENTICATE)
                .is_some_and(|v| v.as_bytes().starts_with(b"Bearer"))
        );
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(PROBLEM_JSON.as_bytes())
        );
    }
}
