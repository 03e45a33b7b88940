//! Opaque session tokens, checked by the provider's RFC 7662 introspection endpoint with
//! `client_secret_basic`. `active` must be true; `exp`, `nbf`, `iss` and `aud` are checked when
//! present. Inactive answers are remembered briefly; an unreachable endpoint is a 503, never a 401,
//! so an outage does not look like everybody signing out.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::claims::ClaimPolicy;
use crate::config::IntrospectionSettings;
use crate::error::{AuthFailure, BrokerError};
use crate::identity::Identity;
use crate::secrets::SecretCell;

const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub struct Introspector {
    settings: IntrospectionSettings,
    secret: Arc<SecretCell>,
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

/// An active token's identity and until when (Unix seconds) it may be reused.
pub struct Introspected {
    pub identity: Identity,
    pub reuse_until: u64,
}

impl Introspector {
    pub fn new(
        settings: &IntrospectionSettings,
        secret: Arc<SecretCell>,
        http: reqwest::Client,
    ) -> Introspector {
        Introspector {
            policy: ClaimPolicy::new(&settings.claims),
            settings: settings.clone(),
            secret,
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
    pub fn issuer(&self) -> Option<&str> {
        self.settings.issuer.as_deref()
    }

    #[tracing::instrument(name = "session.introspect", skip_all, fields(otel.kind = "client"))]
    pub async fn introspect(
        &self,
        token: &str,
        digest: &[u8; 32],
    ) -> Result<Introspected, BrokerError> {
        if self.settings.negative_cache_secs.get() > 0 && self.inactive.contains_key(digest) {
            return Err(BrokerError::Unauthenticated(AuthFailure::Inactive));
        }
        let response = self.request(token).send().await.map_err(|e| {
            tracing::warn!(
                timeout = e.is_timeout(),
                "introspection endpoint unreachable"
            );
            BrokerError::SessionProviderUnavailable
        })?;
        let status = response.status();
        if !status.is_success() {
            // 401/403 here mean *our* client credentials are wrong: an operator problem, not the
            // visitor's, so it must not read as "signed out".
            tracing::error!(
                status = status.as_u16(),
                "introspection endpoint refused the broker"
            );
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

    /// The authenticated introspection request for `token`.
    fn request(&self, token: &str) -> reqwest::RequestBuilder {
        let secret = self.secret.get();
        crate::traces::traced(self.http.post(self.settings.url.url().clone()))
            .basic_auth(&self.settings.client_id, Some(secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")])
    }

    /// Introspects a token that cannot exist, with our credentials (`doctor`): a provider that
    /// accepts them answers 200 `{"active":false}`; 401/403 means it refuses them. Returns the
    /// status and, for a JSON object answer, its `active` member.
    pub async fn probe(&self) -> Result<(u16, Option<bool>), reqwest::Error> {
        let mut raw = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let response = self
            .request(&format!("doctor-probe-{token}"))
            .send()
            .await?;
        let status = response.status().as_u16();
        let active = read_answer(response)
            .await
            .ok()
            .map(|answer| answer.get("active") == Some(&Value::Bool(true)));
        Ok((status, active))
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
