//! Opaque session tokens, checked by the provider's RFC 7662 introspection endpoint. The broker
//! authenticates with `client_secret_basic` or with `private_key_jwt` (RFC 7523: a fresh signed
//! client assertion per call, see [`crate::secrets::client_key`]). `active` must be true; `exp`, `nbf`,
//! `iss` and `aud` are checked when present. Inactive answers are remembered briefly; an
//! unreachable endpoint, or one that refuses the broker's own credentials, is a 503, never a 401,
//! so an outage or a configuration mistake does not look like everybody signing out.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};

use super::claims::ClaimPolicy;
use crate::config::{IntrospectionAuth, IntrospectionSettings};
use crate::error::{AuthFailure, BrokerError};
use crate::identity::Identity;
use crate::secrets::SecretCell;
use crate::secrets::client_key::{ASSERTION_TYPE, ClientKey, ClientKeyError};

const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The `private_key_jwt` key, parsed again when its file rotates (like the HS256 keys).
struct KeySlot {
    file: Arc<SecretCell>,
    client_id: Option<String>,
    key_id: Option<String>,
    /// The file's generation the key was parsed from.
    parsed: RwLock<Option<(u64, Arc<ClientKey>)>>,
}

impl KeySlot {
    fn get(&self) -> Result<Arc<ClientKey>, ClientKeyError> {
        let current = self.file.get();
        {
            let guard = self
                .parsed
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((generation, key)) = guard.as_ref()
                && *generation == current.generation()
            {
                return Ok(Arc::clone(key));
            }
        }
        // The secrets registry only accepts a file that parses, so this rarely fails.
        let key = Arc::new(ClientKey::parse(
            current.expose(),
            self.client_id.as_deref(),
            self.key_id.as_deref(),
        )?);
        let mut guard = self
            .parsed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Some((current.generation(), Arc::clone(&key)));
        Ok(key)
    }
}

/// How the broker proves who it is to the introspection endpoint.
enum Credentials {
    Basic {
        client_id: String,
        secret: Arc<SecretCell>,
    },
    Assertion {
        key: KeySlot,
        /// The assertion's `aud`: the provider's issuer.
        audience: String,
    },
}

pub(crate) struct Introspector {
    settings: IntrospectionSettings,
    credentials: Credentials,
    http: reqwest::Client,
    policy: ClaimPolicy,
    inactive: moka::future::Cache<[u8; 32], ()>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

/// What the introspection endpoint said to [`Introspector::probe`].
#[derive(Debug)]
pub(crate) enum Probe {
    /// An HTTP answer: its status, the `active` member of a 2xx JSON answer, the OAuth `error`
    /// code of a refusal.
    Answered {
        status: u16,
        active: Option<bool>,
        error: Option<String>,
    },
    /// No HTTP answer.
    Unreachable(reqwest::Error),
    /// The client key (`private_key_jwt`) cannot make an assertion.
    KeyUnusable,
}

/// An active token's identity and until when (Unix seconds) it may be reused.
pub(crate) struct Introspected {
    pub identity: Identity,
    pub reuse_until: u64,
}

impl Introspector {
    /// `credential` is the secret the settings' `client_auth` names: the client secret, or the
    /// `private_key_jwt` key file.
    pub(crate) fn new(
        settings: &IntrospectionSettings,
        credential: Arc<SecretCell>,
        http: reqwest::Client,
    ) -> Introspector {
        let credentials = match &settings.auth {
            IntrospectionAuth::SecretBasic { client_id, .. } => Credentials::Basic {
                client_id: client_id.clone(),
                secret: credential,
            },
            IntrospectionAuth::PrivateKeyJwt {
                client_id, key_id, ..
            } => Credentials::Assertion {
                key: KeySlot {
                    file: credential,
                    client_id: client_id.clone(),
                    key_id: key_id.clone(),
                    parsed: RwLock::new(None),
                },
                audience: settings.assertion_audience(),
            },
        };
        if let Credentials::Assertion { key, .. } = &credentials {
            // Parse the key now rather than on the first visitor's request; a failure shows then.
            let _ = key.get();
        }
        Introspector {
            policy: ClaimPolicy::new(&settings.claims),
            settings: settings.clone(),
            credentials,
            http,
            inactive: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(
                    settings.negative_cache_secs.get().max(1),
                ))
                .build(),
        }
    }

    /// The issuer whose JWTs may also be introspected, when configured.
    pub(crate) fn issuer(&self) -> Option<&str> {
        self.settings.issuer.as_deref()
    }

    #[tracing::instrument(name = "session.introspect", skip_all, fields(otel.kind = "client"))]
    pub(crate) async fn introspect(
        &self,
        token: &str,
        digest: &[u8; 32],
    ) -> Result<Introspected, BrokerError> {
        if self.settings.negative_cache_secs.get() > 0 && self.inactive.contains_key(digest) {
            return Err(BrokerError::Unauthenticated(AuthFailure::Inactive));
        }
        let response = self.request(token)?.send().await.map_err(|e| {
            tracing::warn!(
                timeout = e.is_timeout(),
                "introspection endpoint unreachable"
            );
            BrokerError::SessionProviderUnavailable
        })?;
        let status = response.status();
        crate::telemetry::traces::set_status_code(&tracing::Span::current(), status.as_u16());
        if !status.is_success() {
            self.log_refusal(status, response).await;
            return Err(BrokerError::SessionProviderUnavailable);
        }
        let answer = read_answer(response).await?;
        match self.check(&answer) {
            Ok(reuse_until) => Ok(Introspected {
                identity: self.policy.identity(&answer)?,
                reuse_until,
            }),
            Err(failure) => {
                if failure == AuthFailure::Inactive && self.settings.negative_cache_secs.get() > 0 {
                    self.inactive.insert(*digest, ()).await;
                }
                Err(BrokerError::Unauthenticated(failure))
            }
        }
    }

    /// The introspection request with the broker's credentials: HTTP Basic, or a client
    /// assertion made for this one call.
    fn request(&self, token: &str) -> Result<reqwest::RequestBuilder, BrokerError> {
        let request =
            crate::telemetry::traces::traced(self.http.post(self.settings.url.url().clone()))
                .header(reqwest::header::ACCEPT, "application/json");
        let fields = [("token", token), ("token_type_hint", "access_token")];
        match &self.credentials {
            Credentials::Basic { client_id, secret } => {
                let secret = secret.get();
                Ok(request
                    .basic_auth(client_id, Some(secret.expose()))
                    .form(&fields))
            }
            Credentials::Assertion { key, audience } => {
                let unusable = |e: ClientKeyError| {
                    tracing::error!(
                        reason = %e,
                        "introspection client key unusable: a configuration problem (session.introspection.client_key_file)"
                    );
                    BrokerError::SessionProviderUnavailable
                };
                let key = key.get().map_err(unusable)?;
                let assertion = key
                    .assertion(audience, jsonwebtoken::get_current_timestamp())
                    .map_err(unusable)?;
                Ok(request.form(&[
                    fields[0],
                    fields[1],
                    ("client_id", key.client_id()),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", assertion.as_str()),
                ]))
            }
        }
    }

    /// Logs an endpoint's refusal. 401/403 (or an OAuth `invalid_client`) mean *our* client
    /// credentials are wrong: an operator problem, not the visitor's, so it must not read as
    /// "signed out". The log names what was sent (ids, `aud`), never a secret or assertion.
    async fn log_refusal(&self, status: reqwest::StatusCode, response: reqwest::Response) {
        let error = oauth_error(response).await;
        let credentials_refused = matches!(status.as_u16(), 401 | 403)
            || matches!(
                error.as_deref(),
                Some("invalid_client" | "unauthorized_client")
            );
        if !credentials_refused {
            tracing::error!(
                status = status.as_u16(),
                error = error.as_deref(),
                "introspection endpoint failed"
            );
            return;
        }
        match &self.credentials {
            Credentials::Basic { client_id, .. } => tracing::error!(
                status = status.as_u16(),
                error = error.as_deref(),
                client_auth = "client_secret_basic",
                client_id = %client_id,
                "introspection credentials refused: a configuration problem; check session.introspection.client_id and client_secret_file"
            ),
            Credentials::Assertion { key, audience } => {
                let key = key.get().ok();
                tracing::error!(
                    status = status.as_u16(),
                    error = error.as_deref(),
                    client_auth = "private_key_jwt",
                    client_id = key.as_ref().map(|k| k.client_id()),
                    key_id = key.as_ref().map(|k| k.key_id()),
                    audience = %audience,
                    "introspection credentials refused: a configuration problem; check that the key in session.introspection.client_key_file is registered for the client and that the audience is the provider's issuer (set session.introspection.issuer)"
                );
            }
        }
    }

    /// Introspects a token that cannot exist, with our credentials (`doctor`): a provider that
    /// accepts them answers 200 `{"active":false}`; 401/403 (or an OAuth `invalid_client`) means
    /// it refuses them.
    pub(crate) async fn probe(&self) -> Probe {
        let mut raw = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
        let token = crate::hex::encode(&raw);
        let Ok(request) = self.request(&format!("doctor-probe-{token}")) else {
            return Probe::KeyUnusable;
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Probe::Unreachable(e),
        };
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Probe::Answered {
                status,
                active: None,
                error: oauth_error(response).await,
            };
        }
        let active = read_answer(response)
            .await
            .ok()
            .map(|answer| answer.get("active") == Some(&Value::Bool(true)));
        Probe::Answered {
            status,
            active,
            error: None,
        }
    }

    /// Validates the answer; returns until when it may be reused.
    fn check(&self, answer: &Map<String, Value>) -> Result<u64, AuthFailure> {
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(AuthFailure::Inactive);
        }
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.settings.leeway_secs.get();
        let exp = answer.get("exp").and_then(Value::as_u64);
        // The provider's numbers are not ours to trust with plain arithmetic: `u64::MAX` is valid JSON.
        if exp.is_some_and(|exp| exp.saturating_add(leeway) < now) {
            return Err(AuthFailure::Expired);
        }
        if answer
            .get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(AuthFailure::NotYetValid);
        }
        if let (Some(expected), Some(iss)) = (&self.settings.issuer, answer.get("iss"))
            && iss.as_str() != Some(expected.as_str())
        {
            return Err(AuthFailure::UntrustedIssuer);
        }
        // With an audience configured, an answer that names none is not for us either.
        if let Some(expected) = &self.settings.audience {
            let ok = match answer.get("aud") {
                Some(Value::String(a)) => a == expected,
                Some(Value::Array(list)) => {
                    list.iter().any(|a| a.as_str() == Some(expected.as_str()))
                }
                _ => false,
            };
            if !ok {
                return Err(AuthFailure::WrongAudience);
            }
        }
        let ttl_end = now.saturating_add(self.settings.cache_ttl_secs.get());
        Ok(exp.map_or(ttl_end, |exp| exp.min(ttl_end)))
    }
}

/// The OAuth `error` code of a refusal, when it is a short plain word (never the description).
async fn oauth_error(response: reqwest::Response) -> Option<String> {
    let answer = read_answer_quietly(response).await?;
    let code = answer.get("error")?.as_str()?;
    (code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then(|| code.to_owned())
}

async fn read_answer_quietly(mut response: reqwest::Response) -> Option<Map<String, Value>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).ok()
}

async fn read_answer(mut response: reqwest::Response) -> Result<Map<String, Value>, BrokerError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| BrokerError::SessionProviderUnavailable)?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(BrokerError::SessionProviderUnavailable);
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|_| {
        tracing::error!("introspection endpoint answered something that is not a JSON object");
        BrokerError::SessionProviderUnavailable
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn introspector() -> Introspector {
        let settings: IntrospectionSettings = serde_json::from_value(json!({
            "url": "https://auth.test/introspect",
            "client_id": "broker",
            "client_secret_file": "/unused",
        }))
        .unwrap();
        let secret = crate::secrets::SecretCell::with_value(
            crate::secrets::SecretSource::Inline,
            "client-secret".into(),
        );
        Introspector::new(
            &settings,
            Arc::new(secret),
            crate::http_client::builder().build().unwrap(),
        )
    }

    #[test]
    fn extreme_exp_and_nbf_do_not_overflow() {
        // Debug builds panicked on `exp + leeway`; release builds wrapped and called the session
        // expired.
        let introspector = introspector();
        let answer = json!({"active": true, "sub": "u", "exp": u64::MAX, "nbf": 0});
        let reuse_until = introspector
            .check(answer.as_object().unwrap())
            .expect("a far-future exp is not expired");
        assert!(reuse_until <= jsonwebtoken::get_current_timestamp() + 300);
        let answer = json!({"active": true, "sub": "u", "nbf": u64::MAX});
        assert_eq!(
            introspector.check(answer.as_object().unwrap()),
            Err(AuthFailure::NotYetValid)
        );
    }
}
