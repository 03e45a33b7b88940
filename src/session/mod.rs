//! Session verification: who is the person on the page, according to the site's own session?
//!
//! The credential comes from `Authorization: Bearer`, an identity-aware proxy's header, a
//! configured cookie, or a site's own session cookies ([`credential`]). A token is verified
//! strictly against the issuer it names (which must be configured, and must be one whose tokens
//! arrive where this one did): algorithm allow-list (never `none`, one key family per issuer),
//! signature, `iss`, `aud`, `exp` (required), `nbf`, with leeway; or, for opaque tokens, by RFC
//! 7662 introspection. A site's session cookies are checked by asking the site ([`endpoint`]).
//! The identity comes from the verified claims or the site's answer only ([`claims`]).

mod claims;
pub(crate) mod credential;
mod endpoint;
mod introspection;
mod jwks;

pub(crate) use endpoint::{Site, SiteProbe};
pub(crate) use introspection::{Introspector, Probe};
pub(crate) use jwks::{DiscoveryDocument, usable_keys};
mod userinfo;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{
    IntrospectionAuth, IntrospectionSettings, JwtAlgorithm, JwtIssuerSettings, KeySource,
    SessionSettings, UserinfoSource,
};
use crate::error::{AuthFailure, BrokerError};
use crate::identity::Identity;
use crate::secrets::{SecretCell, SecretKind, Secrets};
use crate::telemetry::metrics::Metrics;
use claims::{ClaimPolicy, Claims};
use credential::{Credential, CredentialSource, Sources};
use endpoint::{Forward, SiteEndpoints};
use jwks::{JwksCache, JwksSource, KeyLookup};

/// Tokens larger than this are refused before any parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

struct AlgorithmPolicy {
    alg: Algorithm,
    validation: Validation,
}

/// An HS256 key, rebuilt when its secret rotates.
struct HmacKey {
    secret: Arc<SecretCell>,
    /// The secret's generation the key was built from.
    key: RwLock<(u64, Arc<DecodingKey>)>,
}

impl HmacKey {
    fn new(secret: Arc<SecretCell>) -> HmacKey {
        let current = secret.get();
        let key = Arc::new(DecodingKey::from_secret(current.expose().as_bytes()));
        HmacKey {
            key: RwLock::new((current.generation(), key)),
            secret,
        }
    }

    /// The current key and the secret generation it was built from.
    fn get(&self) -> (u64, Arc<DecodingKey>) {
        let current = self.secret.get();
        {
            let guard = self
                .key
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if guard.0 == current.generation() {
                return (guard.0, Arc::clone(&guard.1));
            }
        }
        let fresh = Arc::new(DecodingKey::from_secret(current.expose().as_bytes()));
        let mut guard = self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = (current.generation(), Arc::clone(&fresh));
        (current.generation(), fresh)
    }

    fn generation(&self) -> u64 {
        self.secret.get().generation()
    }
}

enum IssuerKeys {
    Hmac(HmacKey),
    Jwks(Arc<JwksCache>),
}

struct Issuer {
    keys: IssuerKeys,
    policies: Vec<AlgorithmPolicy>,
    claims: ClaimPolicy,
    /// Where to look up a missing e-mail or name, when enabled.
    userinfo: Option<userinfo::Endpoint>,
    /// The proxy header this issuer's tokens arrive in (its place in [`Sources`]), and only there.
    header: Option<usize>,
}

impl Issuer {
    fn policy(&self, alg: Algorithm) -> Option<&AlgorithmPolicy> {
        self.policies.iter().find(|p| p.alg == alg)
    }

    /// Whether it can verify a session: a shared secret always can, a key set once loaded.
    fn keys_loaded(&self) -> bool {
        match &self.keys {
            IssuerKeys::Hmac(_) => true,
            IssuerKeys::Jwks(cache) => cache.is_loaded(),
        }
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

/// A verified token's identity, remembered until the token's `exp`.
struct VerifiedSession {
    identity: Arc<Identity>,
    valid_until: Instant,
    /// For a session verified with a shared secret: the issuer and the secret's generation. A
    /// rotated secret makes the entry worthless, even one stored while the rotation happened.
    hmac: Option<(usize, u64)>,
    /// The proxy header the token must arrive in to be recalled (none: it must not arrive in one).
    header: Option<usize>,
}

/// What verifying a token established.
struct Verified {
    identity: Identity,
    /// Unix seconds until which the answer may be reused.
    reuse_until: u64,
    hmac: Option<(usize, u64)>,
    header: Option<usize>,
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
    sources: Sources,
    sites: SiteEndpoints,
    /// Keyed by SHA-256 of the token, so an asymmetric signature is checked once per token, not
    /// once per request, and the cache holds no token.
    verified: moka::future::Cache<[u8; 32], Arc<VerifiedSession>>,
    introspector: Option<Introspector>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
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

fn validation_for(settings: &JwtIssuerSettings, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[settings.issuer.as_str()]);
    v.set_audience(&[settings.audience.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = settings.leeway_secs.get();
    v
}

/// A SHA-256 digest of a token: the key of everything remembered about it.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The introspector the settings describe, with its credential from the registry (the verifier's,
/// and `doctor`'s).
pub(crate) fn introspector(
    i: &IntrospectionSettings,
    secrets: &Secrets,
    http: &reqwest::Client,
) -> Result<Introspector, String> {
    let (kind, key) = match &i.auth {
        IntrospectionAuth::SecretBasic { .. } => (
            SecretKind::IntrospectionClient,
            "session.introspection.client_secret_file",
        ),
        IntrospectionAuth::PrivateKeyJwt { .. } => (
            SecretKind::IntrospectionClientKey,
            "session.introspection.client_key_file",
        ),
    };
    let credential = secrets
        .get(kind)
        .ok_or_else(|| format!("config key `{key}`: not loaded"))?;
    Ok(Introspector::new(i, credential, http.clone()))
}

impl SessionVerifier {
    /// Builds the verifier from the settings and the secrets they name.
    pub fn new(
        settings: &SessionSettings,
        secrets: &Secrets,
        http: &reqwest::Client,
        metrics: &Arc<Metrics>,
    ) -> Result<SessionVerifier, String> {
        let sources = Sources::new(settings)?;
        let mut issuers = Vec::with_capacity(settings.jwt.len());
        let mut by_iss = HashMap::new();
        for (index, s) in settings.jwt.iter().enumerate() {
            let keys = match (&s.keys, secrets.get(SecretKind::SessionHs256(index))) {
                (_, Some(secret)) => IssuerKeys::Hmac(HmacKey::new(secret)),
                (KeySource::Hs256(path), None) => {
                    return Err(format!(
                        "config key `session.jwt[{index}].hs256_secret_file`: {} was not loaded",
                        path.display()
                    ));
                }
                (KeySource::Jwks(url), None) => IssuerKeys::Jwks(Arc::new(JwksCache::new(
                    index,
                    JwksSource::Url(url.as_str().to_owned()),
                    http.clone(),
                    Arc::clone(metrics),
                ))),
                (KeySource::Discovery, None) => IssuerKeys::Jwks(Arc::new(JwksCache::new(
                    index,
                    JwksSource::Discovery {
                        issuer: s.issuer.clone(),
                    },
                    http.clone(),
                    Arc::clone(metrics),
                ))),
            };
            let policies = s
                .algorithms
                .iter()
                .map(|alg| AlgorithmPolicy {
                    alg: alg.get(),
                    validation: validation_for(s, alg.get()),
                })
                .collect();
            let userinfo = match (&s.userinfo, &keys) {
                (Some(UserinfoSource::Url(url)), _) => {
                    Some(userinfo::Endpoint::Url(url.as_str().to_owned()))
                }
                (Some(UserinfoSource::Discovered), IssuerKeys::Jwks(cache)) => {
                    Some(userinfo::Endpoint::Discovered(Arc::clone(cache)))
                }
                _ => None,
            };
            by_iss.insert(s.issuer.clone(), index);
            issuers.push(Issuer {
                keys,
                policies,
                claims: ClaimPolicy::new(&s.claims),
                userinfo,
                header: s
                    .header
                    .as_ref()
                    .and_then(|h| sources.header_index(h.as_str())),
            });
        }
        let introspector = match &settings.introspection {
            Some(i) => Some(introspector(i, secrets, http)?),
            None => None,
        };
        Ok(SessionVerifier {
            issuers,
            by_iss,
            sources,
            sites: SiteEndpoints::new(&settings.endpoint, http, metrics),
            verified: moka::future::Cache::builder()
                .max_capacity(VERIFIED_CACHE_ENTRIES)
                .expire_after(UntilTokenExpiry)
                .build(),
            introspector,
            http: http.clone(),
            metrics: Arc::clone(metrics),
        })
    }

    /// True when no session of any kind can be verified (no issuer, no introspection, no site).
    fn is_empty(&self) -> bool {
        self.issuers.is_empty() && self.introspector.is_none() && self.sites.is_empty()
    }

    /// The session credential a request carries: Bearer, else a proxy's header, else a
    /// configured cookie. With no session source configured there is nothing a credential could
    /// be checked against.
    pub fn credential<'a>(&self, headers: &'a HeaderMap) -> Result<Credential<'a>, AuthFailure> {
        let credential = credential::find(headers, &self.sources)?;
        if self.is_empty() {
            return Err(AuthFailure::Missing);
        }
        Ok(credential)
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
        self.issuers.iter().all(Issuer::keys_loaded)
    }

    /// The `[[session.jwt]]` indices of the issuers whose keys never loaded (the admin
    /// listener's `/readyz`).
    pub(crate) fn issuers_without_keys(&self) -> Vec<usize> {
        self.issuers
            .iter()
            .enumerate()
            .filter(|(_, issuer)| !issuer.keys_loaded())
            .map(|(index, _)| index)
            .collect()
    }

    /// A session HS256 secret rotated. A secret is rotated when it may be compromised: sessions
    /// signed with the old one must be verified again, and fail.
    pub fn secret_rotated(&self) {
        self.verified.invalidate_all();
    }

    /// The identity of a credential verified before and still valid, without verifying it again
    /// (and without asking a site).
    pub async fn remembered(&self, credential: &Credential<'_>) -> Option<Arc<Identity>> {
        let token = credential.token.as_ref();
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        if let CredentialSource::SiteCookies(site) = credential.source {
            return self.sites.remembered(site, Forward::Cookies, token).await;
        }
        let recalled = self.recall(&digest(token), credential.proxy_header()).await;
        if recalled.is_none()
            && credential.source == CredentialSource::Bearer
            && self.sites.takes_bearer()
        {
            return self.sites.remembered(0, Forward::Bearer, token).await;
        }
        recalled
    }

    /// A remembered session, unless it expired, its issuer's secret rotated since, or it arrived
    /// somewhere its issuer's tokens are not read from.
    async fn recall(&self, digest: &[u8; 32], header: Option<usize>) -> Option<Arc<Identity>> {
        let seen = self.verified.get(digest).await?;
        if seen.valid_until <= Instant::now()
            || !self.still_current(seen.hmac)
            || seen.header != header
        {
            return None;
        }
        Some(Arc::clone(&seen.identity))
    }

    /// Whether the shared secret a session was verified with is still the issuer's.
    fn still_current(&self, hmac: Option<(usize, u64)>) -> bool {
        match hmac {
            None => true,
            Some((index, generation)) => match self.issuers.get(index).map(|i| &i.keys) {
                Some(IssuerKeys::Hmac(key)) => key.generation() == generation,
                _ => false,
            },
        }
    }

    /// Verifies a session credential and maps its claims to an identity. A credential verified
    /// before is answered from memory until its `exp`.
    #[tracing::instrument(name = "session.verify", skip_all, fields(source = tracing::field::Empty))]
    pub async fn verify(&self, credential: &Credential<'_>) -> Result<Arc<Identity>, BrokerError> {
        let token = credential.token.as_ref();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BrokerError::Unauthenticated(AuthFailure::TooLarge));
        }
        if let CredentialSource::SiteCookies(site) = credential.source {
            let started = Instant::now();
            let verified = self.sites.verify(site, Forward::Cookies, token).await;
            self.observe("endpoint", started);
            return verified;
        }
        let header = credential.proxy_header();
        let digest = digest(token);
        if let Some(identity) = self.recall(&digest, header).await {
            return Ok(identity);
        }
        let started = Instant::now();
        let local = self.verify_jwt(token, header).await;
        if !matches!(local, Err(LocalOutcome::NotForUs(_))) {
            self.observe("jwt", started);
        }
        let verified = match local {
            Ok(verified) => verified,
            Err(LocalOutcome::Refused(e)) => return Err(e),
            // A proxy's header holds its own JWT or nothing usable.
            Err(LocalOutcome::NotForUs(failure)) if header.is_some() => {
                return Err(BrokerError::Unauthenticated(failure));
            }
            Err(LocalOutcome::NotForUs(_))
                if credential.source == CredentialSource::Bearer && self.sites.takes_bearer() =>
            {
                let started = Instant::now();
                let verified = self.sites.verify(0, Forward::Bearer, token).await;
                self.observe("endpoint", started);
                return verified;
            }
            Err(LocalOutcome::NotForUs(failure)) => match &self.introspector {
                Some(introspector) => {
                    let started = Instant::now();
                    let answer = introspector.introspect(token, &digest).await;
                    self.observe("introspection", started);
                    let answer = answer?;
                    Verified {
                        identity: answer.identity,
                        reuse_until: answer.reuse_until,
                        hmac: None,
                        header: None,
                    }
                }
                None => return Err(BrokerError::Unauthenticated(failure)),
            },
        };
        let identity = Arc::new(verified.identity);
        let left = verified
            .reuse_until
            .saturating_sub(jsonwebtoken::get_current_timestamp());
        // A session verified with a secret that rotated meanwhile is not remembered.
        if left > 0 && self.still_current(verified.hmac) {
            let session = VerifiedSession {
                identity: Arc::clone(&identity),
                valid_until: Instant::now() + Duration::from_secs(left).min(MAX_REMEMBERED),
                hmac: verified.hmac,
                header: verified.header,
            };
            self.verified.insert(digest, Arc::new(session)).await;
        }
        Ok(identity)
    }

    /// Records how long a verification by `source` (`jwt`, `introspection`, `endpoint`) took, in the metric
    /// and on the current `session.verify` span.
    fn observe(&self, source: &'static str, started: Instant) {
        self.metrics
            .observe_session_verify(source, started.elapsed());
        tracing::Span::current().record("source", source);
    }

    /// Verifies a JWT locally. `NotForUs` means the token may be for introspection: it is not a
    /// JWT at all (opaque), or a JWT whose `iss` is the introspection issuer; a JWT of any other
    /// unknown issuer is refused here (`UntrustedIssuer`), never sent to the provider. `via`
    /// is the proxy header the token came in: it must be the one its issuer's tokens arrive in.
    async fn verify_jwt(&self, token: &str, via: Option<usize>) -> Result<Verified, LocalOutcome> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LocalOutcome::NotForUs(AuthFailure::Malformed));
        };
        // Three segments whose first is a JOSE header make a JWT; anything else is opaque.
        let header: PeekHeader = decode_segment(header_b64).map_err(LocalOutcome::NotForUs)?;
        if header.crit.is_some() {
            // We understand no extension, so a token that demands one must be refused (RFC 7515 §4.1.11).
            return Err(BrokerError::Unauthenticated(AuthFailure::Malformed).into());
        }
        let alg = JwtAlgorithm::from_name(&header.alg)
            .ok_or(BrokerError::Unauthenticated(
                AuthFailure::UnsupportedAlgorithm,
            ))?
            .get();
        let peek: PeekClaims = decode_segment(payload_b64)
            .map_err(|_| BrokerError::Unauthenticated(AuthFailure::Malformed))?;
        let Some(index) = peek
            .iss
            .as_deref()
            .and_then(|iss| self.by_iss.get(iss))
            .copied()
        else {
            let introspected = self
                .introspector
                .as_ref()
                .is_some_and(|i| i.issuer().is_some() && i.issuer() == peek.iss.as_deref());
            return Err(if introspected {
                LocalOutcome::NotForUs(AuthFailure::Malformed)
            } else {
                BrokerError::Unauthenticated(AuthFailure::UntrustedIssuer).into()
            });
        };
        let issuer = &self.issuers[index];
        if issuer.header != via {
            return Err(BrokerError::Unauthenticated(AuthFailure::WrongPlace).into());
        }
        let policy = issuer.policy(alg).ok_or(BrokerError::Unauthenticated(
            AuthFailure::UnsupportedAlgorithm,
        ))?;

        let mut hmac = None;
        let claims = match &issuer.keys {
            IssuerKeys::Hmac(key) => {
                let (generation, key) = key.get();
                hmac = Some((index, generation));
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
        if let Some(endpoint) = &issuer.userinfo
            && (identity.email.is_none() || identity.name.is_none())
        {
            let subject = claims.get("sub").and_then(serde_json::Value::as_str);
            endpoint
                .complete(&self.http, &issuer.claims, token, subject, &mut identity)
                .await;
        }
        Ok(Verified {
            identity,
            reuse_until: exp,
            hmac,
            header: issuer.header,
        })
    }
}

fn decode_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Claims, BrokerError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::InlineSecrets;
    use serde_json::json;

    fn hs256_verifier() -> SessionVerifier {
        let settings = crate::config::Settings::from_toml_with_env(
            r#"
[server]
[intellia]
organization_id = "org"
api_key_env = "UNUSED"
[[session.jwt]]
issuer = "https://auth.test"
audience = "widget"
hs256_secret_file = "/unused"
algorithms = ["HS256"]
"#,
            Vec::<(String, String)>::new(),
        )
        .unwrap();
        let secrets = Secrets::load(
            &settings,
            InlineSecrets {
                api_key: Some("k".into()),
                session_hs256: vec![(0, "a-test-secret-that-is-long-enough-for-hs256".into())],
            },
        )
        .unwrap();
        SessionVerifier::new(
            &settings.session,
            &secrets,
            &crate::http_client::builder().build().unwrap(),
            &Arc::new(Metrics::new()),
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
            let identity = verifier.verify(&Credential::bearer(&token)).await.unwrap();
            assert_eq!(identity.user_id.as_str(), "u-1");
        }
        assert!(
            verifier
                .remembered(&Credential::bearer(&token))
                .await
                .is_some()
        );
    }
}
