//! Filling a missing e-mail or name from the provider's userinfo endpoint. Best effort: the
//! session is already verified, so a failing endpoint only leaves the fields out.

use std::sync::Arc;

use super::claims::{ClaimPolicy, Claims};
use super::jwks::JwksCache;
use crate::identity::Identity;

/// Answers larger than this are not userinfo answers.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub(super) enum Endpoint {
    Url(String),
    /// The endpoint the issuer's discovery document names.
    Discovered(Arc<JwksCache>),
}

impl Endpoint {
    #[tracing::instrument(name = "session.userinfo", skip_all, fields(otel.kind = "client"))]
    pub(super) async fn complete(
        &self,
        http: &reqwest::Client,
        policy: &ClaimPolicy,
        token: &str,
        subject: Option<&str>,
        identity: &mut Identity,
    ) {
        let url = match self {
            Endpoint::Url(url) => Some(url.clone()),
            Endpoint::Discovered(cache) => cache.userinfo_endpoint(),
        };
        let Some(url) = url else { return };
        let answer = async {
            let response = crate::telemetry::traces::traced(http.get(&url))
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            crate::telemetry::traces::set_status_code(
                &tracing::Span::current(),
                response.status().as_u16(),
            );
            if !response.status().is_success() {
                tracing::warn!(
                    status = response.status().as_u16(),
                    "userinfo refused the session token"
                );
                return None;
            }
            let bytes = response.bytes().await.ok()?;
            if bytes.len() > MAX_ANSWER_BYTES {
                return None;
            }
            serde_json::from_slice::<Claims>(&bytes).ok()
        }
        .await;
        let Some(info) = answer else {
            tracing::warn!("userinfo lookup failed; e-mail or name left out");
            return;
        };
        // The answer must be about the same person (OIDC Core §5.3.2).
        let answered = info.get("sub").and_then(serde_json::Value::as_str);
        if answered.is_none() || answered != subject {
            tracing::warn!("userinfo answered for another subject; ignored");
            return;
        }
        if identity.email.is_none() {
            identity.email = policy.email(&info);
        }
        if identity.name.is_none() {
            identity.name = policy.name(&info);
        }
    }
}
