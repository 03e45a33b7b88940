//! Sites whose session lives on their own server (`[[session.endpoint]]`): the broker asks the
//! site who the visitor is, as Ory Oathkeeper's `cookie_session` authenticator does.
//!
//! The request carries the visitor's session cookies for that site and nothing else of theirs (or,
//! for the one `bearer` site, their opaque Bearer token), `Accept: application/json`, the broker's
//! `User-Agent` and the trace context. A redirect is never followed: it is the login page. 401,
//! 403, any 3xx and a 200 naming no user mean "signed out"; 5xx, 429, any other status, a timeout,
//! a connection or TLS failure, a 200 that is not JSON and an answer over 64 KiB mean the site is
//! unavailable (503), so an outage never looks like everybody signing out.
//!
//! A confirmed session is remembered for at most `cache_secs`, keyed by an HMAC of the forwarded
//! credential under a key made at start-up (the cache holds no cookie, and its keys are worthless
//! outside this process); concurrent first requests with one credential share one call. Refusals
//! are not remembered: a visitor who signs in with the same cookie is let in at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::header::HeaderValue;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::EndpointSettings;
use crate::config::values::RoleName;
use crate::error::{AuthFailure, BrokerError};
use crate::identity::{DisplayName, Email, Identity, UserId};
use crate::telemetry::metrics::Metrics;

/// Answers larger than this are not a "who am I" answer; reading stops there.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Calls in flight to one site at most; past it a new visitor gets 503 at once instead of the
/// broker opening ever more connections to a site that has stopped answering.
const MAX_IN_FLIGHT: usize = 256;

/// Confirmed sessions remembered per site at most (least recently used go first).
const MAX_REMEMBERED: u64 = 100_000;

/// What the site's answer meant, as the metric and the span name it (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    SignedIn,
    /// 401 or 403.
    SignedOut,
    /// Any 3xx: a login redirect (never followed).
    Redirected,
    /// 200 without a usable user id.
    NoUserId,
    /// 5xx, 429 or a status no session endpoint answers with.
    Failed,
    /// 200 that is not JSON, or larger than [`MAX_ANSWER_BYTES`].
    Invalid,
    Timeout,
    /// No HTTP answer: DNS, connect, TLS, a broken connection.
    Unreachable,
    /// [`MAX_IN_FLIGHT`] calls are already waiting for the site.
    Saturated,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::SignedIn => "signed_in",
            Outcome::SignedOut => "signed_out",
            Outcome::Redirected => "redirected",
            Outcome::NoUserId => "no_user_id",
            Outcome::Failed => "failed",
            Outcome::Invalid => "invalid",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
            Outcome::Saturated => "saturated",
        }
    }

    /// What the visitor is told.
    fn error(self) -> BrokerError {
        match self {
            Outcome::SignedOut | Outcome::Redirected => {
                BrokerError::Unauthenticated(AuthFailure::Inactive)
            }
            Outcome::NoUserId => BrokerError::Unauthenticated(AuthFailure::MissingClaim),
            _ => BrokerError::SessionProviderUnavailable,
        }
    }
}

/// How a status is read before any body is: `None` for 200, whose body decides.
pub(crate) fn classify_status(status: u16) -> Option<Outcome> {
    match status {
        200 => None,
        401 | 403 => Some(Outcome::SignedOut),
        300..=399 => Some(Outcome::Redirected),
        _ => Some(Outcome::Failed),
    }
}

/// How the visitor's credential goes to the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// As the site's own `Cookie` header.
    Cookies,
    /// As `Authorization: Bearer`.
    Bearer,
}

/// One site, asked who the visitor is.
pub(crate) struct Site {
    index: usize,
    settings: EndpointSettings,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// Keyed by [`SiteEndpoints::key_for`].
    sessions: moka::future::Cache<[u8; 32], Arc<Identity>>,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("index", &self.index)
            .field("url", &self.settings.url.as_str())
            .finish_non_exhaustive()
    }
}

/// What a site answered to a request that carries no session (`doctor`).
#[derive(Debug)]
pub(crate) enum SiteProbe {
    /// 401, 403, a redirect (with its `Location` as sent), or a 200 naming nobody.
    SignedOut {
        status: u16,
        location: Option<String>,
    },
    /// A 200 naming a user for a request without any session: it would let anybody in.
    NamesSomebody,
    /// An answer every visitor would get 503 for.
    Unusable { status: u16, outcome: Outcome },
    /// No HTTP answer.
    Unreachable(reqwest::Error),
    /// The body did not arrive whole in time.
    Timeout,
}

impl Site {
    pub(crate) fn new(
        index: usize,
        settings: &EndpointSettings,
        http: &reqwest::Client,
        metrics: &Arc<Metrics>,
    ) -> Site {
        Site {
            index,
            settings: settings.clone(),
            http: http.clone(),
            metrics: Arc::clone(metrics),
            sessions: moka::future::Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(Duration::from_secs(settings.cache_secs.get()))
                .build(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Asks the site, bounded by `timeout_ms` from the first byte sent to the last byte read.
    async fn ask(&self, credential: &str, forward: Forward) -> Result<Identity, BrokerError> {
        let span = tracing::info_span!(
            "session.endpoint",
            otel.kind = "client",
            endpoint = self.index,
            outcome = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let (outcome, result) = match self.in_flight.try_acquire() {
            Err(_) => (Outcome::Saturated, Err(Outcome::Saturated.error())),
            Ok(_permit) => {
                let timeout = Duration::from_millis(self.settings.timeout_ms.get());
                match tokio::time::timeout(timeout, self.exchange(credential, forward))
                    .instrument(span.clone())
                    .await
                {
                    Ok(answer) => answer,
                    Err(_) => (Outcome::Timeout, Err(Outcome::Timeout.error())),
                }
            }
        };
        span.record("outcome", outcome.label());
        if matches!(result, Err(BrokerError::SessionProviderUnavailable)) {
            span.record("otel.status_code", "error");
            tracing::warn!(
                parent: &span,
                endpoint = self.index,
                outcome = outcome.label(),
                "session endpoint unavailable; visitors get 503"
            );
        }
        self.metrics
            .observe_session_endpoint(self.index, outcome.label(), started.elapsed());
        result
    }

    /// The site's URL.
    pub(crate) fn url(&self) -> &str {
        self.settings.url.as_str()
    }

    pub(crate) fn settings(&self) -> &EndpointSettings {
        &self.settings
    }

    /// Asks the site about a request that carries no session, as `doctor` does: a working
    /// endpoint says "signed out".
    pub(crate) async fn probe(&self) -> SiteProbe {
        let request =
            crate::telemetry::traces::traced(self.http.get(self.settings.url.url().clone()))
                .timeout(Duration::from_millis(self.settings.timeout_ms.get()))
                .header(reqwest::header::ACCEPT, "application/json");
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return SiteProbe::Unreachable(e),
        };
        let status = response.status().as_u16();
        match classify_status(status) {
            Some(Outcome::SignedOut | Outcome::Redirected) => {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                return SiteProbe::SignedOut { status, location };
            }
            Some(outcome) => return SiteProbe::Unusable { status, outcome },
            None => {}
        }
        let body = match read_bounded(&mut response).await {
            Ok(body) => body,
            Err(Outcome::Timeout) => return SiteProbe::Timeout,
            Err(outcome) => return SiteProbe::Unusable { status, outcome },
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(answer) => match self.identity(&answer) {
                Err(BrokerError::Unauthenticated(_)) => SiteProbe::SignedOut {
                    status,
                    location: None,
                },
                _ => SiteProbe::NamesSomebody,
            },
            Err(_) => SiteProbe::Unusable {
                status,
                outcome: Outcome::Invalid,
            },
        }
    }

    /// One request and its answer.
    async fn exchange(
        &self,
        credential: &str,
        forward: Forward,
    ) -> (Outcome, Result<Identity, BrokerError>) {
        let request =
            crate::telemetry::traces::traced(self.http.get(self.settings.url.url().clone()))
                .timeout(Duration::from_millis(self.settings.timeout_ms.get()))
                .header(reqwest::header::ACCEPT, "application/json");
        let request = match forward {
            Forward::Bearer => request.bearer_auth(credential),
            Forward::Cookies => match HeaderValue::from_str(credential) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request.header(reqwest::header::COOKIE, value)
                }
                Err(_) => {
                    return (
                        Outcome::SignedOut,
                        Err(BrokerError::Unauthenticated(AuthFailure::Malformed)),
                    );
                }
            },
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return (Outcome::Timeout, Err(Outcome::Timeout.error())),
            Err(_) => return (Outcome::Unreachable, Err(Outcome::Unreachable.error())),
        };
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        if let Some(outcome) = classify_status(status) {
            if outcome == Outcome::Failed {
                tracing::warn!(
                    endpoint = self.index,
                    status,
                    "session endpoint answered an error"
                );
            }
            return (outcome, Err(outcome.error()));
        }
        let body = match read_bounded(&mut response).await {
            Ok(body) => body,
            Err(outcome) => return (outcome, Err(outcome.error())),
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(answer) => match self.identity(&answer) {
                Ok(identity) => (Outcome::SignedIn, Ok(identity)),
                Err(e @ BrokerError::Forbidden(_)) => (Outcome::SignedIn, Err(e)),
                Err(e) => (Outcome::NoUserId, Err(e)),
            },
            Err(_) => (Outcome::Invalid, Err(Outcome::Invalid.error())),
        }
    }

    /// The identity a 200 answer names: the user id (a non-empty string, or an integer written
    /// in decimal) with the site's prefix, the roles the service requires, an e-mail and a name
    /// when they are usable.
    pub(crate) fn identity(&self, answer: &Value) -> Result<Identity, BrokerError> {
        let s = &self.settings;
        let raw = match s.user_id_pointer.resolve(answer) {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => return Err(BrokerError::Unauthenticated(AuthFailure::MissingClaim)),
        };
        let user_id = UserId::parse(format!("{}{raw}", s.user_id_prefix.as_str()))
            .ok_or(BrokerError::Unauthenticated(AuthFailure::InvalidUserId))?;
        if let Some(roles) = &s.roles
            && !holds_role(roles.pointer.resolve(answer), &roles.required)
        {
            return Err(BrokerError::Forbidden(
                "the session lacks a role this service requires".into(),
            ));
        }
        let text = |pointer: &Option<crate::config::JsonPointer>| {
            pointer
                .as_ref()
                .and_then(|p| p.resolve(answer))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(Identity {
            user_id,
            email: text(&s.email_pointer).and_then(Email::parse),
            name: text(&s.name_pointer).and_then(DisplayName::parse),
        })
    }
}

/// Reads a 200's body up to [`MAX_ANSWER_BYTES`]; a longer one is abandoned where it crosses the
/// bound (a declared length over it, at once), never buffered whole.
async fn read_bounded(response: &mut reqwest::Response) -> Result<Vec<u8>, Outcome> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(Outcome::Invalid);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Outcome::Invalid);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(Outcome::Timeout),
            Err(_) => return Err(Outcome::Unreachable),
        }
    }
}

/// Whether the roles the answer lists include a required one (true when none is required): an
/// array of role names, or an object whose keys are role names and whose values are an object or
/// `true` (a role mapped to `false` or a string is not held).
fn holds_role(roles: Option<&Value>, required: &[RoleName]) -> bool {
    if required.is_empty() {
        return true;
    }
    let wanted = |role: &str| required.iter().any(|r| r.as_str() == role);
    match roles {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(wanted),
        Some(Value::Object(map)) => map
            .iter()
            .any(|(role, v)| matches!(v, Value::Object(_) | Value::Bool(true)) && wanted(role)),
        _ => false,
    }
}

/// Every configured site, and the key their remembered sessions are filed under.
pub(crate) struct SiteEndpoints {
    sites: Vec<Site>,
    /// The site that takes opaque Bearer tokens, if any.
    bearer: Option<usize>,
    /// Random per process: a remembered session's key reveals nothing about its cookie.
    key: [u8; 32],
}

impl std::fmt::Debug for SiteEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteEndpoints")
            .field("sites", &self.sites)
            .finish_non_exhaustive()
    }
}

impl SiteEndpoints {
    pub(crate) fn new(
        settings: &[EndpointSettings],
        http: &reqwest::Client,
        metrics: &Arc<Metrics>,
    ) -> SiteEndpoints {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        for (n, site) in settings.iter().enumerate() {
            if site.is_plaintext_remote() {
                tracing::warn!(
                    endpoint = n,
                    url = site.url.as_str(),
                    "session.endpoint url is plain http to a host that is not this machine: visitors' session cookies cross the network unencrypted; use https://"
                );
            }
        }
        SiteEndpoints {
            sites: settings
                .iter()
                .enumerate()
                .map(|(n, s)| Site::new(n, s, http, metrics))
                .collect(),
            bearer: settings.iter().position(|s| s.bearer),
            key,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    pub(crate) fn takes_bearer(&self) -> bool {
        self.bearer.is_some()
    }

    /// The key a credential's session is remembered under: which site, how it was forwarded, and
    /// the credential itself, under the process's key.
    fn key_for(&self, site: usize, forward: Forward, credential: &str) -> [u8; 32] {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(&(site as u64).to_be_bytes());
        mac.update(&[forward as u8]);
        mac.update(credential.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A session the site confirmed less than `cache_secs` ago.
    pub(crate) async fn remembered(
        &self,
        site: usize,
        forward: Forward,
        credential: &str,
    ) -> Option<Arc<Identity>> {
        let site_index = match forward {
            Forward::Cookies => site,
            Forward::Bearer => self.bearer?,
        };
        let s = self.sites.get(site_index)?;
        s.sessions
            .get(&self.key_for(site_index, forward, credential))
            .await
    }

    /// Asks the site (concurrent first requests with one credential share one call), or answers
    /// from what it confirmed less than `cache_secs` ago.
    pub(crate) async fn verify(
        &self,
        site: usize,
        forward: Forward,
        credential: &str,
    ) -> Result<Arc<Identity>, BrokerError> {
        let site_index = match forward {
            Forward::Cookies => site,
            Forward::Bearer => self
                .bearer
                .ok_or(BrokerError::Unauthenticated(AuthFailure::Malformed))?,
        };
        let Some(s) = self.sites.get(site_index) else {
            return Err(BrokerError::Unauthenticated(AuthFailure::Missing));
        };
        let key = self.key_for(site_index, forward, credential);
        s.sessions
            .try_get_with(key, async {
                s.ask(credential, forward).await.map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn site(keys: &str) -> Site {
        let text = format!(
            "[server]\n[intellia]\norganization_id = \"o\"\napi_key_env = \"K\"\n[[session.endpoint]]\nurl = \"https://www.example.com/api/me\"\ncookies = [\"sessionid\"]\n{keys}\n"
        );
        let settings =
            crate::config::Settings::from_toml_with_env(&text, Vec::<(String, String)>::new())
                .expect("valid");
        Site::new(
            0,
            &settings.session.endpoint[0],
            &crate::http_client::builder().build().expect("client"),
            &Arc::new(Metrics::new()),
        )
    }

    fn decide(site: &Site, answer: Value) -> Result<String, &'static str> {
        match site.identity(&answer) {
            Ok(identity) => Ok(identity.user_id.as_str().to_owned()),
            Err(BrokerError::Forbidden(_)) => Err("forbidden"),
            Err(BrokerError::Unauthenticated(_)) => Err("unauthenticated"),
            Err(_) => Err("other"),
        }
    }

    #[test]
    fn statuses_map_to_signed_out_or_unavailable() {
        assert_eq!(classify_status(200), None);
        for s in [401, 403] {
            assert_eq!(classify_status(s), Some(Outcome::SignedOut));
        }
        for s in [301, 302, 303, 307, 308, 300, 304] {
            assert_eq!(classify_status(s), Some(Outcome::Redirected));
        }
        for s in [500, 502, 503, 504, 429, 404, 400, 204, 201, 418] {
            assert_eq!(classify_status(s), Some(Outcome::Failed), "{s}");
        }
        assert!(matches!(
            Outcome::Redirected.error(),
            BrokerError::Unauthenticated(_)
        ));
        for o in [
            Outcome::Failed,
            Outcome::Invalid,
            Outcome::Timeout,
            Outcome::Unreachable,
            Outcome::Saturated,
        ] {
            assert!(
                matches!(o.error(), BrokerError::SessionProviderUnavailable),
                "{o:?}"
            );
        }
    }

    #[test]
    fn user_ids_are_non_empty_strings_or_integers() {
        let s = site("user_id_pointer = \"/user/id\"\nuser_id_prefix = \"site:\"");
        assert_eq!(
            decide(&s, json!({"user": {"id": "u-1"}})),
            Ok("site:u-1".into())
        );
        assert_eq!(
            decide(&s, json!({"user": {"id": 42}})),
            Ok("site:42".into())
        );
        assert_eq!(
            decide(&s, json!({"user": {"id": -7}})),
            Ok("site:-7".into())
        );
        for answer in [
            json!({}),
            json!({"user": null}),
            json!({"user": {"id": ""}}),
            json!({"user": {"id": {"id": "u-1"}}}),
            json!({"user": {"id": ["u-1"]}}),
            json!({"user": {"id": 1.5}}),
            json!({"user": {"id": true}}),
            json!({"user": {"id": "a\u{0}b"}}),
            json!({"user": {"id": "x".repeat(300)}}),
            json!("u-1"),
        ] {
            assert_eq!(
                decide(&s, answer.clone()),
                Err("unauthenticated"),
                "{answer}"
            );
        }
    }

    #[test]
    fn roles_count_only_as_names_or_objects_or_true() {
        let s = site(
            "user_id_pointer = \"/id\"\nroles_pointer = \"/roles\"\nrequired_roles = [\"chat\"]",
        );
        for ok in [
            json!({"id": "u", "roles": ["x", "chat"]}),
            json!({"id": "u", "roles": {"chat": true}}),
            json!({"id": "u", "roles": {"chat": {"org": "1"}}}),
        ] {
            assert_eq!(decide(&s, ok.clone()), Ok("u".into()), "{ok}");
        }
        for refused in [
            json!({"id": "u"}),
            json!({"id": "u", "roles": "chat"}),
            json!({"id": "u", "roles": {"chat": false}}),
            json!({"id": "u", "roles": {"chat": "yes"}}),
            json!({"id": "u", "roles": {"chat": null}}),
            json!({"id": "u", "roles": [{"chat": true}]}),
        ] {
            assert_eq!(decide(&s, refused.clone()), Err("forbidden"), "{refused}");
        }
    }

    #[test]
    fn email_and_name_are_read_when_usable() {
        let s = site(
            "user_id_pointer = \"/id\"\nemail_pointer = \"/email\"\nname_pointer = \"/profile/name\"",
        );
        let identity = s
            .identity(&json!({"id": "u", "email": "a@example.com", "profile": {"name": "Ann"}}))
            .expect("signed in");
        assert_eq!(
            identity.email.as_ref().map(Email::as_str),
            Some("a@example.com")
        );
        assert_eq!(identity.name.as_ref().map(DisplayName::as_str), Some("Ann"));
        let identity = s
            .identity(&json!({"id": "u", "email": "not an address", "profile": {"name": 7}}))
            .expect("signed in");
        assert!(identity.email.is_none() && identity.name.is_none());
    }

    #[tokio::test]
    async fn keys_depend_on_the_site_the_forwarding_and_the_credential() {
        let http = crate::http_client::builder().build().expect("client");
        let s = site("user_id_pointer = \"/id\"");
        let sites = SiteEndpoints {
            sites: vec![s],
            bearer: None,
            key: [7; 32],
        };
        let a = sites.key_for(0, Forward::Cookies, "sessionid=a");
        assert_eq!(a, sites.key_for(0, Forward::Cookies, "sessionid=a"));
        assert_ne!(a, sites.key_for(1, Forward::Cookies, "sessionid=a"));
        assert_ne!(a, sites.key_for(0, Forward::Bearer, "sessionid=a"));
        assert_ne!(a, sites.key_for(0, Forward::Cookies, "sessionid=b"));
        let other = SiteEndpoints::new(&[], &http, &Arc::new(Metrics::new()));
        assert_ne!(other.key, [7; 32]);
    }
}
