//! The client for Intellia's `POST /orgs/{organizationId}/assume-role`.
//!
//! One attempt is bounded by `timeout_ms`; a timed-out attempt is not retried (the caller has already
//! waited long enough). Connect errors, 429 and 5xx are retried up to `max_retries` times with
//! exponential backoff and full jitter, honouring a short `Retry-After`. Upstream bodies are never
//! passed on: callers see a status class, operators see the status in the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::Instrument;

use crate::breaker::CircuitBreaker;
use crate::config::IntelliaSettings;
use crate::error::BrokerError;
use crate::identity::{DisplayName, Email, Identity};
use crate::secrets::SecretCell;
use crate::telemetry::metrics::Metrics;

/// The identity Intellia should mint a token for, as its request body spells it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AssumeRoleRequest<'a> {
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_name: Option<&'a str>,
}

impl<'a> From<&'a Identity> for AssumeRoleRequest<'a> {
    fn from(identity: &'a Identity) -> Self {
        AssumeRoleRequest {
            user_id: identity.user_id.as_str(),
            user_email: identity.email.as_ref().map(Email::as_str),
            user_name: identity.name.as_ref().map(DisplayName::as_str),
        }
    }
}

/// A minted chat token. The token itself is a secret: `Debug` redacts it.
pub struct MintedToken {
    pub token: SecretString,
    pub expires_at: OffsetDateTime,
    pub user_id: String,
    pub organization_id: String,
    pub role: String,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("user_id", &self.user_id)
            .field("organization_id", &self.organization_id)
            .field("role", &self.role)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssumeRoleResponse {
    token: SecretString,
    expires_at: String,
    user_id: String,
    organization_id: String,
    role: String,
}

/// What went wrong upstream, already classified for the error table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("Intellia refused the request with HTTP {status}")]
    Rejected { status: u16 },
    #[error("Intellia answered with an unusable response ({reason})")]
    Invalid { reason: &'static str },
    #[error("Intellia is unavailable ({cause})")]
    Unavailable {
        cause: Unavailability,
        retry_after_secs: Option<u64>,
    },
    #[error("Intellia did not answer within the timeout")]
    Timeout,
    /// Our own API key cannot travel in a header (it holds a line break or another byte a header
    /// cannot carry): nothing was sent, and Intellia is not to blame.
    #[error("the Intellia API key cannot be sent in an HTTP header")]
    UnsendableKey,
}

/// Why Intellia could not be reached or would not serve: each is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailability {
    RateLimited,
    ServerError,
    CircuitOpen,
    ConnectFailed,
    Transport,
}

impl std::fmt::Display for Unavailability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unavailability::RateLimited => "rate limited by Intellia",
            Unavailability::ServerError => "Intellia server error",
            Unavailability::CircuitOpen => "circuit open",
            Unavailability::ConnectFailed => "connection failed",
            Unavailability::Transport => "transport error",
        })
    }
}

impl From<UpstreamError> for BrokerError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Rejected { status } => BrokerError::UpstreamRejected { status },
            UpstreamError::Invalid { .. } => BrokerError::UpstreamInvalid,
            UpstreamError::Unavailable {
                retry_after_secs, ..
            } => BrokerError::UpstreamUnavailable { retry_after_secs },
            UpstreamError::Timeout => BrokerError::UpstreamTimeout,
            UpstreamError::UnsendableKey => BrokerError::Internal(Arc::new(e)),
        }
    }
}

/// A `Retry-After` longer than this is not waited out inside a request; it is passed on instead.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// Intellia's answer is a few hundred bytes; anything far larger is not an answer.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub(crate) struct IntelliaClient {
    http: reqwest::Client,
    url: reqwest::Url,
    api_key: Arc<SecretCell>,
    max_retries: u32,
    timeout: Duration,
    deadline: Duration,
    metrics: Arc<Metrics>,
    breaker: CircuitBreaker,
}

impl std::fmt::Debug for IntelliaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntelliaClient")
            .field("url", &self.url.as_str())
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl IntelliaClient {
    pub(crate) fn new(
        settings: &IntelliaSettings,
        api_key: Arc<SecretCell>,
        metrics: Arc<Metrics>,
    ) -> Result<IntelliaClient, String> {
        let url = settings.assume_role_url();
        let timeout = Duration::from_millis(settings.timeout_ms.get());
        let http = crate::http_client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the Intellia HTTP client: {e}"))?;
        Ok(IntelliaClient {
            http,
            url,
            api_key,
            max_retries: settings.max_retries.get(),
            timeout,
            deadline: settings.deadline(),
            metrics,
            breaker: CircuitBreaker::new(
                settings.breaker_failures.get(),
                Duration::from_secs(settings.breaker_open_secs.get()),
            ),
        })
    }

    /// Mints a token, retrying what is worth retrying, behind the circuit breaker: while Intellia
    /// is failing, callers get 503 at once instead of queueing behind timeouts.
    #[tracing::instrument(name = "intellia.assume_role", skip_all)]
    pub(crate) async fn assume_role(
        &self,
        identity: &Identity,
    ) -> Result<MintedToken, UpstreamError> {
        let req = AssumeRoleRequest::from(identity);
        let req = &req;
        // Checked before the breaker: a key we cannot send says nothing about Intellia.
        let auth = self.authorization()?;
        if !self.breaker.allow() {
            let wait = self.breaker.retry_after();
            return Err(UpstreamError::Unavailable {
                cause: Unavailability::CircuitOpen,
                retry_after_secs: Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            });
        }
        let outcome = self.assume_role_with_retries(req, &auth).await;
        match &outcome {
            Ok(_) | Err(UpstreamError::Rejected { .. }) => {
                if self.breaker.success() {
                    tracing::info!("Intellia answers again; circuit closed");
                    self.metrics.upstream_circuit_open.set(0);
                }
            }
            Err(_) => {
                if self.breaker.failure() {
                    tracing::warn!("Intellia keeps failing; circuit open");
                    self.metrics.upstream_circuit_open.set(1);
                }
            }
        }
        outcome
    }

    /// `Authorization: Bearer <api key>`, marked sensitive so no HTTP-level log shows it.
    fn authorization(&self) -> Result<HeaderValue, UpstreamError> {
        let key = self.api_key.get();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| UpstreamError::UnsendableKey)?;
        auth.set_sensitive(true);
        Ok(auth)
    }

    async fn assume_role_with_retries(
        &self,
        req: &AssumeRoleRequest<'_>,
        auth: &HeaderValue,
    ) -> Result<MintedToken, UpstreamError> {
        let mut attempt = 0u32;
        let deadline = Instant::now() + self.deadline;
        loop {
            let started = Instant::now();
            // The last attempt gets only what is left of the overall deadline.
            let budget = self
                .timeout
                .min(deadline.saturating_duration_since(started));
            if budget.is_zero() {
                return Err(UpstreamError::Timeout);
            }
            let span = tracing::info_span!(
                "intellia.attempt",
                otel.kind = "client",
                attempt = attempt + 1,
                otel.status_code = tracing::field::Empty,
            );
            crate::telemetry::traces::set_resend_count(&span, attempt);
            let outcome = self
                .attempt(req, auth, budget)
                .instrument(span.clone())
                .await;
            if outcome.is_err() {
                span.record("otel.status_code", "error");
            }
            self.metrics
                .observe_upstream(status_class(&outcome), started.elapsed());
            let error = match outcome {
                Ok(token) => return Ok(token),
                Err(e) => e,
            };
            let UpstreamError::Unavailable {
                retry_after_secs, ..
            } = &error
            else {
                return Err(error);
            };
            if attempt >= self.max_retries {
                return Err(error);
            }
            let wait = match retry_after_secs {
                Some(secs) if Duration::from_secs(*secs) > MAX_INLINE_RETRY_AFTER => {
                    return Err(error);
                }
                Some(secs) => Duration::from_secs(*secs) + jitter(BACKOFF_BASE),
                None => jitter(BACKOFF_CAP.min(BACKOFF_BASE * 2u32.saturating_pow(attempt))),
            };
            // A retry that could not even start before the deadline is not worth waiting for.
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::info!(attempt = attempt + 1, wait_ms = wait.as_millis() as u64, error = %error, "retrying Intellia");
            self.metrics.upstream_retries.inc();
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        req: &AssumeRoleRequest<'_>,
        auth: &HeaderValue,
        timeout: Duration,
    ) -> Result<MintedToken, UpstreamError> {
        let response = crate::telemetry::traces::traced(self.http.post(self.url.clone()))
            .header(AUTHORIZATION, auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(timeout)
            .json(req)
            .send()
            .await
            .map_err(classify_transport_error)?;

        let status = response.status();
        crate::telemetry::traces::set_status_code(&tracing::Span::current(), status.as_u16());
        if status.is_success() {
            let body = read_body(response).await?;
            let minted = parse_assume_role_body(&body)?;
            // A token for someone else must never reach this user, nor be cached for either.
            if minted.user_id != req.user_id {
                tracing::warn!(
                    "Intellia's answer names another user than the one asked for; the token is dropped"
                );
                return Err(UpstreamError::Invalid {
                    reason: "the answer names another user",
                });
            }
            return Ok(minted);
        }
        tracing::warn!(status = status.as_u16(), "Intellia answered with an error");
        Err(error_for_status(status, response.headers()))
    }
}

impl IntelliaClient {
    /// The assume-role URL, for `doctor`'s report.
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// Calls assume-role with our key and a body naming no user (`doctor`): a request that cannot
    /// mint, since there is nobody to mint for. Intellia answers 400/422 once the key and the
    /// organization are accepted, 401/403 when the key is refused, 404 for an unknown
    /// organization. Returns the status; the body is never read.
    pub(crate) async fn probe(&self) -> Result<reqwest::StatusCode, reqwest::Error> {
        // A key that cannot be sent goes out as a placeholder, which Intellia refuses: the
        // report then says the key is refused, which is the remedy.
        let auth = self
            .authorization()
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer -"));
        let response = crate::telemetry::traces::traced(self.http.post(self.url.clone()))
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(self.timeout)
            .body("{}")
            .send()
            .await?;
        Ok(response.status())
    }
}

/// Classifies a non-2xx answer: 429 and 5xx are worth retrying (with the upstream's `Retry-After`,
/// in whole seconds, bounded to an hour), other 4xx are a refusal, anything else is unusable.
pub fn error_for_status(status: reqwest::StatusCode, headers: &HeaderMap) -> UpstreamError {
    let retry_after_secs = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after_secs(v, std::time::SystemTime::now()));
    match status.as_u16() {
        429 => UpstreamError::Unavailable {
            cause: Unavailability::RateLimited,
            retry_after_secs,
        },
        500..=599 => UpstreamError::Unavailable {
            cause: Unavailability::ServerError,
            retry_after_secs,
        },
        code @ 400..=499 => UpstreamError::Rejected { status: code },
        _ => UpstreamError::Invalid {
            reason: "unexpected status",
        },
    }
}

/// `Retry-After` (RFC 9110 section 10.2.3): delay-seconds, or an HTTP date in any of the three
/// forms a recipient must read, counted from `now`. Both are bounded to 1 s to an hour: a date in
/// the past means "now", which still waits one second, as `0` does.
fn retry_after_secs(value: &str, now: std::time::SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.clamp(1, 3600));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(now).unwrap_or_default();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Some(secs.clamp(1, 3600))
}

fn status_class(outcome: &Result<MintedToken, UpstreamError>) -> &'static str {
    match outcome {
        Ok(_) => "2xx",
        Err(UpstreamError::Rejected { .. }) => "4xx",
        Err(UpstreamError::Unavailable { cause, .. }) => match cause {
            Unavailability::RateLimited => "429",
            Unavailability::ServerError => "5xx",
            Unavailability::CircuitOpen
            | Unavailability::ConnectFailed
            | Unavailability::Transport => "connect_error",
        },
        // An unsendable key is found before any attempt; it never reaches this count.
        Err(UpstreamError::Invalid { .. } | UpstreamError::UnsendableKey) => "invalid",
        Err(UpstreamError::Timeout) => "timeout",
    }
}

fn classify_transport_error(e: reqwest::Error) -> UpstreamError {
    // The error's text can contain the URL, never the key (headers are not part of it); log the
    // kind only, to keep logs predictable.
    if e.is_connect() {
        tracing::warn!("cannot connect to Intellia");
        UpstreamError::Unavailable {
            cause: Unavailability::ConnectFailed,
            retry_after_secs: None,
        }
    } else if e.is_timeout() {
        tracing::warn!("Intellia timed out");
        UpstreamError::Timeout
    } else {
        tracing::warn!("Intellia request failed in transport");
        UpstreamError::Unavailable {
            cause: Unavailability::Transport,
            retry_after_secs: None,
        }
    }
}

/// Reads a 2xx body, refusing one far larger than any real answer without reading the rest.
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::with_capacity(512);
    while let Some(chunk) = response.chunk().await.map_err(classify_transport_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(UpstreamError::Invalid {
                reason: "response too large",
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turns a 2xx assume-role body into a token. Whatever the body holds, the answer is a token or
/// [`UpstreamError::Invalid`]; nothing of the body reaches the error.
pub fn parse_assume_role_body(body: &[u8]) -> Result<MintedToken, UpstreamError> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(UpstreamError::Invalid {
            reason: "response too large",
        });
    }
    let parsed: AssumeRoleResponse =
        serde_json::from_slice(body).map_err(|_| UpstreamError::Invalid {
            reason: "malformed JSON",
        })?;
    if parsed.token.expose_secret().is_empty() {
        return Err(UpstreamError::Invalid {
            reason: "empty token",
        });
    }
    let expires_at = OffsetDateTime::parse(&parsed.expires_at, &Rfc3339).map_err(|_| {
        UpstreamError::Invalid {
            reason: "expiresAt is not RFC 3339",
        }
    })?;
    // In UTC, `9999-12-31T23:59:59-01:00` is in year 10000 (`to_offset` panics) and
    // `0000-01-01T00:00:00+01:00` in year -1 (RFC 3339 cannot write it in our response).
    let expires_at = expires_at
        .checked_to_offset(time::UtcOffset::UTC)
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or(UpstreamError::Invalid {
            reason: "expiresAt is out of range",
        })?;
    Ok(MintedToken {
        token: parsed.token,
        expires_at,
        user_id: parsed.user_id,
        organization_id: parsed.organization_id,
        role: parsed.role,
    })
}

/// Full jitter: uniformly random in `[0, cap]`.
fn jitter(cap: Duration) -> Duration {
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=cap_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_body_uses_intellia_field_names_and_omits_absent_fields() {
        let identity = Identity {
            user_id: crate::identity::UserId::parse("user-123".into()).unwrap(),
            email: None,
            name: DisplayName::parse("John".into()),
        };
        assert_eq!(
            serde_json::to_string(&AssumeRoleRequest::from(&identity)).unwrap(),
            r#"{"userId":"user-123","userName":"John"}"#
        );
    }

    #[test]
    fn minted_token_debug_redacts_the_token() {
        let t = MintedToken {
            token: SecretString::from("sim_supersecret"),
            expires_at: OffsetDateTime::UNIX_EPOCH,
            user_id: "u".into(),
            organization_id: "o".into(),
            role: "chat".into(),
        };
        assert!(!format!("{t:?}").contains("supersecret"));
    }

    #[test]
    fn expires_at_beyond_the_rfc_3339_years_in_utc_is_invalid_not_a_panic() {
        // Found by reading while writing the `intellia_response` fuzz target (its replay inputs
        // are in fuzz/regressions/intellia_response/): the first panicked, the second became a 500.
        for at in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            let body = format!(
                r#"{{"token":"t","expiresAt":"{at}","userId":"u","organizationId":"o","role":"chat"}}"#
            );
            assert_eq!(
                parse_assume_role_body(body.as_bytes()).unwrap_err(),
                UpstreamError::Invalid {
                    reason: "expiresAt is out of range"
                },
                "{at}"
            );
        }
        let body = r#"{"token":"t","expiresAt":"9999-12-31T23:59:59+01:00","userId":"u","organizationId":"o","role":"chat"}"#;
        let minted = parse_assume_role_body(body.as_bytes()).expect("in range");
        assert_eq!(minted.expires_at.offset(), time::UtcOffset::UTC);
        assert_eq!(minted.expires_at.hour(), 22);
    }

    #[test]
    fn retry_after_reads_seconds_and_all_three_http_date_forms() {
        use std::time::{Duration, SystemTime};
        // Sun, 06 Nov 1994 08:49:37 GMT
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after_secs("30", now), Some(30));
        assert_eq!(retry_after_secs(" 0 ", now), Some(1));
        assert_eq!(retry_after_secs("86400", now), Some(3600));
        for date in [
            "Sun, 06 Nov 1994 08:50:07 GMT",
            "Sunday, 06-Nov-94 08:50:07 GMT",
            "Sun Nov  6 08:50:07 1994",
        ] {
            assert_eq!(retry_after_secs(date, now), Some(30), "{date}");
        }
        assert_eq!(
            retry_after_secs(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now - Duration::from_millis(200)
            ),
            Some(1),
            "a partial second rounds up"
        );
        assert_eq!(
            retry_after_secs("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(1),
            "a date in the past: retry now, still bounded below"
        );
        assert_eq!(
            retry_after_secs("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(3600),
            "a far date is bounded like the seconds form"
        );
        for junk in [
            "",
            "-5",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:50:07",
            "18446744073709551616",
        ] {
            assert_eq!(retry_after_secs(junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn jitter_stays_within_cap() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
    }
}
