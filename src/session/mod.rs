//! Session verification: who is the person on the page, according to the site's own session?
//!
//! The token comes from `Authorization: Bearer` or a configured cookie. It is verified strictly
//! against the issuer it names (which must be configured): algorithm allow-list (never `none`, one
//! key family per issuer), signature, `iss`, `aud`, `exp` (required), `nbf`, with leeway. The
//! identity comes from the verified claims only.

pub mod introspection;
pub mod jwks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{JwtIssuerSettings, SessionSettings};
use crate::error::{AuthFailure, BrokerError};
use crate::metrics::Metrics;
use crate::secrets::{SecretCell, SecretSource};
use introspection::Introspector;
use jwks::{JwksCache, JwksSource, KeyLookup};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Upper bound on user ids, as Intellia's `userId` field.
pub const MAX_USER_ID_CHARS: usize = 256;

/// The verified person behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

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

struct AlgorithmPolicy {
    alg: Algorithm,
    validation: Validation,
}

enum IssuerKeys {
    Hmac {
        secret: Arc<SecretCell>,
        key: RwLock<Arc<DecodingKey>>,
    },
    Jwks(Arc<JwksCache>),
}

struct Issuer {
    keys: IssuerKeys,
    policies: Vec<AlgorithmPolicy>,
    claims: ClaimPolicy,
    /// Where to look up a missing e-mail or name, when enabled.
    userinfo: Option<UserinfoSource>,
}

enum UserinfoSource {
    Url(String),
    Discovered(Arc<JwksCache>),
}

/// How verified claims become an identity: claim names, prefix and required claims.
pub struct ClaimPolicy {
    user_id_claim: String,
    email_claim: String,
    name_claim: String,
    user_id_prefix: String,
    required: Vec<(String, String)>,
}

impl ClaimPolicy {
    pub fn new(
        user_id_claim: &str,
        email_claim: &str,
        name_claim: &str,
        user_id_prefix: &str,
        required: &[String],
    ) -> ClaimPolicy {
        ClaimPolicy {
            user_id_claim: user_id_claim.to_owned(),
            email_claim: email_claim.to_owned(),
            name_claim: name_claim.to_owned(),
            user_id_prefix: user_id_prefix.to_owned(),
            required: required
                .iter()
                .filter_map(|c| c.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// Whether the claims meet every `claim=value` condition: a string (or number or boolean)
    /// equal to the value, or an array containing it.
    fn satisfied(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.required.iter().all(|(name, wanted)| {
            let matches = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s == wanted,
                serde_json::Value::Bool(b) => b.to_string() == *wanted,
                serde_json::Value::Number(n) => n.to_string() == *wanted,
                _ => false,
            };
            match claim(claims, name) {
                Some(serde_json::Value::Array(items)) => items.iter().any(matches),
                Some(v) => matches(v),
                None => false,
            }
        })
    }

    fn text(
        claims: &serde_json::Map<String, serde_json::Value>,
        name: &str,
        max: usize,
    ) -> Option<String> {
        claim(claims, name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| {
                !v.is_empty() && v.chars().count() <= max && !v.chars().any(char::is_control)
            })
            .map(str::to_owned)
    }

    fn email(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        Self::text(claims, &self.email_claim, 320).filter(|e| crate::routes::plausible_email(e))
    }

    fn name(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        Self::text(claims, &self.name_claim, 256)
    }

    /// Maps verified claims to an identity, enforcing the user-id rules and required claims.
    pub fn identity(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Identity, BrokerError> {
        let raw_id = match claim(claims, &self.user_id_claim) {
            Some(serde_json::Value::String(s)) => s.as_str(),
            _ => return Err(BrokerError::Unauthenticated(AuthFailure::MissingClaim)),
        };
        let user_id = if self.user_id_prefix.is_empty() {
            raw_id.to_owned()
        } else {
            format!("{}{raw_id}", self.user_id_prefix)
        };
        if raw_id.is_empty() || !valid_user_id(&user_id) {
            return Err(BrokerError::Unauthenticated(AuthFailure::InvalidUserId));
        }
        if !self.satisfied(claims) {
            return Err(BrokerError::Forbidden(
                "the session lacks a claim this service requires".into(),
            ));
        }
        Ok(Identity {
            user_id,
            email: self.email(claims),
            name: self.name(claims),
        })
    }
}

/// Why a token was not verified locally; some of these let introspection have a go.
enum LocalOutcome {
    /// Not a JWT, or a JWT from an issuer not configured here.
    NotForUs(AuthFailure),
    Refused(BrokerError),
}

impl From<BrokerError> for LocalOutcome {
    fn from(e: BrokerError) -> Self {
        LocalOutcome::Refused(e)
    }
}

impl Issuer {
    fn policy(&self, alg: Algorithm) -> Option<&AlgorithmPolicy> {
        self.policies.iter().find(|p| p.alg == alg)
    }
}

/// A verified token's identity, remembered until the token's `exp`.
struct VerifiedSession {
    identity: Arc<Identity>,
    valid_until: Instant,
}

struct UntilTokenExpiry;

impl moka::Expiry<[u8; 32], Arc<VerifiedSession>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedSession>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.valid_until.saturating_duration_since(created_at))
    }
}

/// The longest a verified session is remembered, whatever its `exp` says: a far-future `exp` (the
/// fuzzer's `u64::MAX`) would otherwise overflow the monotonic clock.
const MAX_REMEMBERED: Duration = Duration::from_secs(24 * 60 * 60);

/// How many verified sessions are remembered; beyond it the least recently used are dropped.
const VERIFIED_CACHE_ENTRIES: u64 = 100_000;

/// Verifies session tokens for every configured issuer.
pub struct SessionVerifier {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cookie_names: Vec<String>,
    /// Keyed by SHA-256 of the token, so an asymmetric signature is checked once per token, not
    /// once per request, and the cache holds no token.
    verified: moka::future::Cache<[u8; 32], Arc<VerifiedSession>>,
    introspector: Option<Introspector>,
    http: reqwest::Client,
}

impl std::fmt::Debug for SessionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionVerifier")
            .field("issuers", &self.by_iss.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct PeekHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct PeekClaims {
    #[serde(default)]
    iss: Option<String>,
}

fn decode_segment<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, AuthFailure> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthFailure::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthFailure::Malformed)
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn validation_for(settings: &JwtIssuerSettings, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[settings.issuer.as_str()]);
    v.set_audience(&[settings.audience.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = settings.leeway_secs;
    v
}

fn hmac_key(secret: &SecretCell) -> Arc<DecodingKey> {
    Arc::new(DecodingKey::from_secret(
        secret.get().expose_secret().as_bytes(),
    ))
}

impl SessionVerifier {
    /// Builds the verifier, reading HS256 secret files now (a missing one is a start-up error).
    /// `inline_secrets` supplies HS256 secrets by issuer index instead of files (`dev` mode).
    pub fn new(
        settings: &SessionSettings,
        http: &reqwest::Client,
        metrics: &Arc<Metrics>,
        mut inline_secrets: HashMap<usize, SecretCell>,
    ) -> Result<SessionVerifier, String> {
        let mut issuers = Vec::with_capacity(settings.jwt.len());
        let mut by_iss = HashMap::new();
        let mut cookie_names = Vec::new();
        for (index, s) in settings.jwt.iter().enumerate() {
            let keys = if let Some(cell) = inline_secrets.remove(&index) {
                let secret = Arc::new(cell);
                IssuerKeys::Hmac {
                    key: RwLock::new(hmac_key(&secret)),
                    secret,
                }
            } else if let Some(path) = &s.hs256_secret_file {
                let secret = Arc::new(SecretCell::load(SecretSource::File(path.clone())).map_err(
                    |e| format!("config key `session.jwt[{index}].hs256_secret_file`: {e}"),
                )?);
                if secret.get().expose_secret().len() < 32 {
                    return Err(format!(
                        "config key `session.jwt[{index}].hs256_secret_file`: secret {} is shorter than 32 bytes",
                        path.display()
                    ));
                }
                IssuerKeys::Hmac {
                    key: RwLock::new(hmac_key(&secret)),
                    secret,
                }
            } else {
                let source = match &s.jwks_url {
                    Some(url) => JwksSource::Url(url.clone()),
                    None => JwksSource::Discovery {
                        issuer: s.issuer.clone(),
                    },
                };
                IssuerKeys::Jwks(Arc::new(JwksCache::new(
                    index,
                    source,
                    http.clone(),
                    Arc::clone(metrics),
                )))
            };
            let policies = s
                .algorithms
                .iter()
                .filter_map(|a| parse_algorithm(a))
                .map(|alg| AlgorithmPolicy {
                    alg,
                    validation: validation_for(s, alg),
                })
                .collect();
            let userinfo = match (&s.userinfo_url, &keys) {
                (_, _) if !s.userinfo => None,
                (Some(url), _) => Some(UserinfoSource::Url(url.clone())),
                (None, IssuerKeys::Jwks(cache)) => {
                    Some(UserinfoSource::Discovered(Arc::clone(cache)))
                }
                (None, IssuerKeys::Hmac { .. }) => None,
            };
            if let Some(cookie) = &s.cookie
                && !cookie_names.contains(cookie)
            {
                cookie_names.push(cookie.clone());
            }
            by_iss.insert(s.issuer.clone(), index);
            issuers.push(Issuer {
                keys,
                policies,
                claims: ClaimPolicy::new(
                    &s.user_id_claim,
                    &s.email_claim,
                    &s.name_claim,
                    &s.user_id_prefix,
                    &s.required_claims,
                ),
                userinfo,
            });
        }
        let introspector = settings
            .introspection
            .as_ref()
            .map(|i| Introspector::new(i, http.clone()))
            .transpose()?;
        Ok(SessionVerifier {
            issuers,
            by_iss,
            cookie_names,
            verified: moka::future::Cache::builder()
                .max_capacity(VERIFIED_CACHE_ENTRIES)
                .expire_after(UntilTokenExpiry)
                .build(),
            introspector,
            http: http.clone(),
        })
    }

    /// True when no session of any kind can be verified (no issuer, no introspection).
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty() && self.introspector.is_none()
    }

    /// Starts background JWKS refreshers (the first fetch happens at once).
    pub fn spawn_refreshers(&self) {
        for issuer in &self.issuers {
            if let IssuerKeys::Jwks(cache) = &issuer.keys {
                cache.spawn_refresher();
            }
        }
    }

    /// True when every JWKS issuer has loaded its keys at least once.
    pub fn keys_loaded(&self) -> bool {
        self.issuers.iter().all(|i| match &i.keys {
            IssuerKeys::Hmac { .. } => true,
            IssuerKeys::Jwks(cache) => cache.is_loaded(),
        })
    }

    /// Re-reads HS256 secret files; returns the issuers whose secret failed to load.
    pub fn reload_secrets(&self) -> Vec<(usize, String)> {
        let mut failures = Vec::new();
        for (index, issuer) in self.issuers.iter().enumerate() {
            if let IssuerKeys::Hmac { secret, key } = &issuer.keys {
                match secret.reload() {
                    Ok(true) => {
                        let fresh = hmac_key(secret);
                        match key.write() {
                            Ok(mut g) => *g = fresh,
                            Err(p) => *p.into_inner() = fresh,
                        }
                        // A secret is rotated when it may be compromised: sessions signed with
                        // the old one must be verified again, and fail.
                        self.verified.invalidate_all();
                        tracing::info!(issuer = index, "session HS256 secret reloaded");
                    }
                    Ok(false) => {}
                    Err(e) => failures.push((index, e.to_string())),
                }
            }
        }
        if let Some(introspector) = &self.introspector
            && let Err(e) = introspector.secret().reload()
        {
            failures.push((self.issuers.len(), e.to_string()));
        }
        failures
    }

    /// Finds the session credential: Bearer first, then any configured cookie.
    pub fn credential<'a>(&self, req: &'a HttpRequest) -> Result<Credential<'a>, AuthFailure> {
        if let Some(token) = bearer_token(req)? {
            return Ok(Credential {
                token,
                source: CredentialSource::Bearer,
            });
        }
        self.cookie_names
            .iter()
            .find_map(|name| cookie_value(req, name))
            .map(|token| Credential {
                token,
                source: CredentialSource::Cookie,
            })
            .ok_or(AuthFailure::Missing)
    }

    /// Verifies a session token and maps its claims to an identity. A token verified before is
    /// answered from memory until its `exp`.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, BrokerError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BrokerError::Unauthenticated(AuthFailure::TooLarge));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(seen) = self.verified.get(&digest).await
            && seen.valid_until > Instant::now()
        {
            return Ok(Arc::clone(&seen.identity));
        }
        let (identity, reuse_until) = match self.verify_jwt(token).await {
            Ok(verified) => verified,
            Err(LocalOutcome::Refused(e)) => return Err(e),
            Err(LocalOutcome::NotForUs(failure)) => match &self.introspector {
                Some(introspector) => {
                    let answer = introspector.introspect(token, &digest).await?;
                    (answer.identity, answer.reuse_until)
                }
                None => return Err(BrokerError::Unauthenticated(failure)),
            },
        };
        let identity = Arc::new(identity);
        let left = reuse_until.saturating_sub(jsonwebtoken::get_current_timestamp());
        if left > 0 {
            let session = VerifiedSession {
                identity: Arc::clone(&identity),
                valid_until: Instant::now() + Duration::from_secs(left).min(MAX_REMEMBERED),
            };
            self.verified.insert(digest, Arc::new(session)).await;
        }
        Ok(identity)
    }

    /// Verifies a JWT locally; returns the identity and the token's `exp`.
    async fn verify_jwt(&self, token: &str) -> Result<(Identity, u64), LocalOutcome> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LocalOutcome::NotForUs(AuthFailure::Malformed));
        };
        let header: PeekHeader = decode_segment(header_b64).map_err(LocalOutcome::NotForUs)?;
        if header.crit.is_some() {
            // We understand no extension, so a token that demands one must be refused (RFC 7515 §4.1.11).
            return Err(BrokerError::Unauthenticated(AuthFailure::Malformed).into());
        }
        let alg = parse_algorithm(&header.alg).ok_or(BrokerError::Unauthenticated(
            AuthFailure::UnsupportedAlgorithm,
        ))?;
        let peek: PeekClaims = decode_segment(payload_b64).map_err(LocalOutcome::NotForUs)?;
        let index = peek
            .iss
            .as_deref()
            .and_then(|iss| self.by_iss.get(iss))
            .copied()
            .ok_or(LocalOutcome::NotForUs(AuthFailure::UntrustedIssuer))?;
        let issuer = &self.issuers[index];
        let policy = issuer.policy(alg).ok_or(BrokerError::Unauthenticated(
            AuthFailure::UnsupportedAlgorithm,
        ))?;

        let claims = match &issuer.keys {
            IssuerKeys::Hmac { key, .. } => {
                let key = match key.read() {
                    Ok(g) => Arc::clone(&g),
                    Err(p) => Arc::clone(&p.into_inner()),
                };
                decode_claims(token, &key, &policy.validation)?
            }
            IssuerKeys::Jwks(cache) => match cache.lookup(header.kid.as_deref(), alg).await {
                KeyLookup::Found(key) => decode_claims(token, &key.key, &policy.validation)?,
                KeyLookup::Unknown => {
                    return Err(BrokerError::Unauthenticated(AuthFailure::UnknownKey).into());
                }
                KeyLookup::Unavailable => {
                    return Err(BrokerError::SessionProviderUnavailable.into());
                }
            },
        };
        // `exp` is required and was validated, so it is a number here.
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let mut identity = issuer.claims.identity(&claims)?;
        if let Some(source) = &issuer.userinfo
            && (identity.email.is_none() || identity.name.is_none())
        {
            let subject = claims.get("sub").and_then(serde_json::Value::as_str);
            self.complete_from_userinfo(source, &issuer.claims, token, subject, &mut identity)
                .await;
        }
        Ok((identity, exp))
    }

    /// Fills a missing e-mail or name from the provider's userinfo endpoint. Best effort: the
    /// session is already verified, so a failing endpoint only leaves the fields out.
    async fn complete_from_userinfo(
        &self,
        source: &UserinfoSource,
        policy: &ClaimPolicy,
        token: &str,
        subject: Option<&str>,
        identity: &mut Identity,
    ) {
        let url = match source {
            UserinfoSource::Url(url) => Some(url.clone()),
            UserinfoSource::Discovered(cache) => cache.userinfo_endpoint(),
        };
        let Some(url) = url else { return };
        let answer = async {
            let response = self.http.get(&url).bearer_auth(token).send().await.ok()?;
            if !response.status().is_success() {
                tracing::warn!(
                    status = response.status().as_u16(),
                    "userinfo refused the session token"
                );
                return None;
            }
            let bytes = response.bytes().await.ok()?;
            if bytes.len() > 64 * 1024 {
                return None;
            }
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
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

fn decode_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<serde_json::Map<String, serde_json::Value>, BrokerError> {
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| {
            let failure = match e.kind() {
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
                ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
                ErrorKind::InvalidIssuer => AuthFailure::UntrustedIssuer,
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthFailure::UnsupportedAlgorithm
                }
                ErrorKind::MissingRequiredClaim(_) => AuthFailure::MissingClaim,
                _ => AuthFailure::Malformed,
            };
            tracing::debug!(reason = ?e.kind(), "session token refused");
            BrokerError::Unauthenticated(failure)
        })
}

/// Looks a claim up by name. A name present as-is wins (Zitadel's `urn:zitadel:iam:...` names are
/// flat); otherwise a dotted path walks nested objects (`realm_access.roles`).
pub fn claim<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a serde_json::Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A user id Intellia will accept: 1–256 characters, none of them control characters.
pub fn valid_user_id(id: &str) -> bool {
    let count = id.chars().count();
    (1..=MAX_USER_ID_CHARS).contains(&count) && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_claim_names() {
        let claims = json!({
            "urn:zitadel:iam:user:resourceowner:id": "org-1",
            "realm_access": {"roles": ["chat"]},
            "a.b": "flat wins"
        });
        let map = claims.as_object().unwrap();
        assert_eq!(
            claim(map, "urn:zitadel:iam:user:resourceowner:id"),
            Some(&json!("org-1"))
        );
        assert_eq!(claim(map, "realm_access.roles"), Some(&json!(["chat"])));
        assert_eq!(claim(map, "a.b"), Some(&json!("flat wins")));
        assert_eq!(claim(map, "realm_access.missing"), None);
    }

    fn hs256_verifier() -> SessionVerifier {
        let settings: SessionSettings = serde_json::from_value(json!({"jwt": [{
            "issuer": "https://auth.test",
            "audience": "widget",
            "hs256_secret_file": "/unused",
            "algorithms": ["HS256"],
        }]}))
        .unwrap();
        let secret = SecretCell::with_value(
            SecretSource::Inline,
            "a-test-secret-that-is-long-enough-for-hs256".into(),
        );
        SessionVerifier::new(
            &settings,
            &crate::http_client::builder().build().unwrap(),
            &Arc::new(Metrics::new()),
            HashMap::from([(0, secret)]),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn far_future_exp_verifies_without_overflowing_the_clock() {
        // Found by the fuzz seed `fuzz/seeds/session_token/accept-huge-exp`: this panicked with
        // "overflow when adding duration to instant".
        let verifier = hs256_verifier();
        let claims =
            json!({"iss": "https://auth.test", "aud": "widget", "sub": "u-1", "exp": u64::MAX});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"a-test-secret-that-is-long-enough-for-hs256"),
        )
        .unwrap();
        for _ in 0..2 {
            // The second answer comes from the verified-session cache.
            let identity = verifier.verify(&token).await.unwrap();
            assert_eq!(identity.user_id, "u-1");
        }
    }

    #[test]
    fn user_id_rules() {
        assert!(valid_user_id("user-123"));
        assert!(valid_user_id("ünïcødé"));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("a\nb"));
        assert!(!valid_user_id(&"x".repeat(257)));
        assert!(valid_user_id(&"x".repeat(256)));
    }
}
