//! A cached JWKS for one issuer: fetched at start-up and refreshed in the background, refetched on
//! an unknown `kid` at most once per [`UNKNOWN_KID_REFETCH`], and kept (stale) while the provider is
//! down, so a provider outage only matters to tokens signed with keys the broker never saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tracing::Instrument;

use crate::secrets::client_key::{MIN_RSA_BITS, modulus_bits};
use crate::telemetry::metrics::{IssuerIndexLabels, IssuerLabels, Metrics};

/// An unknown `kid` triggers at most one fetch per this window, so a storm of forged kids costs
/// the provider one request per window.
pub(super) const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// Background refresh bounds: a `Cache-Control: max-age` inside them is honoured.
pub(super) const MIN_REFRESH: Duration = Duration::from_secs(60);
pub(super) const MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
pub(super) const DEFAULT_REFRESH: Duration = Duration::from_secs(5 * 60);
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// A verification key with the algorithms it may be used with.
pub(super) struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The JWK's `alg`, when it names one: the key is then usable with that algorithm only.
    pub alg: Option<Algorithm>,
    family: Family,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(super) fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (self.family, alg),
            (
                Family::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (Family::P256, Algorithm::ES256)
                | (Family::P384, Algorithm::ES384)
                | (Family::Ed25519, Algorithm::EdDSA)
        )
    }
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
}

/// Where the key set lives.
#[derive(Debug, Clone)]
pub(super) enum JwksSource {
    Url(String),
    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must match exactly.
    Discovery {
        issuer: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("cannot reach {what}: {reason}")]
    Unreachable { what: &'static str, reason: String },
    #[error("{what} answered HTTP {status}")]
    Status { what: &'static str, status: u16 },
    #[error("{what} is not valid: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("a fetch was made moments ago or is under way")]
    InProgress,
}

/// The outcome of a key lookup.
pub(super) enum KeyLookup {
    Found(Arc<VerifyKey>),
    /// The key set is known and has no such key (after any refetch that was allowed).
    Unknown,
    /// No key set has ever been fetched and the provider cannot be reached.
    Unavailable,
}

pub(super) struct JwksCache {
    issuer_index: usize,
    source: JwksSource,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    keys: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    last_fetch: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
    next_refresh: Mutex<Duration>,
    userinfo_endpoint: RwLock<Option<String>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source)
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JwksCache {
    pub(super) fn new(
        issuer_index: usize,
        source: JwksSource,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> JwksCache {
        // 0 = never fetched, until the first success.
        metrics
            .jwks_last_success
            .get_or_create(&IssuerIndexLabels {
                issuer: issuer_index.to_string(),
            })
            .set(0);
        JwksCache {
            issuer_index,
            source,
            http,
            metrics,
            keys: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            last_fetch: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            next_refresh: Mutex::new(DEFAULT_REFRESH),
            userinfo_endpoint: RwLock::new(None),
        }
    }

    /// The provider's userinfo endpoint, when discovery announced one.
    pub(super) fn userinfo_endpoint(&self) -> Option<String> {
        match self.userinfo_endpoint.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// True once a key set has been fetched successfully.
    pub(super) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        let set = self.snapshot();
        match kid {
            Some(kid) => set.by_kid.get(kid).filter(|k| k.fits(alg)).cloned(),
            None => {
                // Without a kid, only an unambiguous key is acceptable.
                let mut fitting = set.all.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(Arc::clone(k)),
                    _ => None,
                }
            }
        }
    }

    /// Finds the key for a token, refetching once per window when it is unknown. While no key
    /// set has ever loaded, requests do not queue behind a fetch: they get `Unavailable` at once,
    /// and the window holds for them too (the background refresher keeps retrying).
    pub(super) async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup {
        if let Some(key) = self.find(kid, alg) {
            return KeyLookup::Found(key);
        }
        let loaded = self.is_loaded();
        if self.window_open() {
            let fetched = if loaded {
                self.refresh_if_due(UNKNOWN_KID_REFETCH).await
            } else {
                match self.fetch_lock.try_lock() {
                    Ok(guard) => self.refresh_locked(guard, UNKNOWN_KID_REFETCH).await,
                    Err(_) => Err(FetchError::InProgress),
                }
            };
            if fetched.is_ok()
                && let Some(key) = self.find(kid, alg)
            {
                return KeyLookup::Found(key);
            }
        }
        if self.is_loaded() {
            KeyLookup::Unknown
        } else {
            KeyLookup::Unavailable
        }
    }

    /// Whether a request may trigger a fetch: at most one per [`UNKNOWN_KID_REFETCH`].
    fn window_open(&self) -> bool {
        lock(&self.last_fetch).is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH)
    }

    /// Fetches unless another fetch started less than `min_age` ago. Concurrent callers share one
    /// fetch: the lock is taken, and the age re-checked, before any request is made.
    pub(super) async fn refresh_if_due(&self, min_age: Duration) -> Result<(), FetchError> {
        let guard = self.fetch_lock.lock().await;
        self.refresh_locked(guard, min_age).await
    }

    async fn refresh_locked(
        &self,
        _guard: tokio::sync::MutexGuard<'_, ()>,
        min_age: Duration,
    ) -> Result<(), FetchError> {
        if lock(&self.last_fetch).is_some_and(|t| t.elapsed() < min_age) {
            return if self.is_loaded() {
                Ok(())
            } else {
                Err(FetchError::InProgress)
            };
        }
        // Stamp the attempt before it is made: a failing provider is asked once per window too.
        *lock(&self.last_fetch) = Some(Instant::now());
        let span = tracing::info_span!(
            "jwks.fetch",
            otel.kind = "client",
            issuer = self.issuer_index,
            otel.status_code = tracing::field::Empty,
        );
        let result = self.fetch().instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        let label = IssuerLabels {
            issuer: self.issuer_index.to_string(),
            result: if result.is_ok() { "ok" } else { "error" },
        };
        self.metrics.jwks_fetches.get_or_create(&label).inc();
        match result {
            Ok((set, max_age)) => {
                let count = set.all.len();
                match self.keys.write() {
                    Ok(mut g) => *g = Arc::new(set),
                    Err(p) => *p.into_inner() = Arc::new(set),
                }
                self.loaded.store(true, Ordering::Release);
                self.metrics
                    .jwks_last_success
                    .get_or_create(&IssuerIndexLabels {
                        issuer: self.issuer_index.to_string(),
                    })
                    .set(time::OffsetDateTime::now_utc().unix_timestamp());
                *lock(&self.next_refresh) =
                    max_age.map_or(DEFAULT_REFRESH, |a| a.clamp(MIN_REFRESH, MAX_REFRESH));
                tracing::info!(issuer = self.issuer_index, keys = count, "JWKS loaded");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = self.issuer_index, error = %e, stale_keys_kept = self.is_loaded(), "JWKS fetch failed");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let url = match &self.source {
            JwksSource::Url(url) => url.clone(),
            JwksSource::Discovery { issuer } => self.discover(issuer).await?,
        };
        let (body, max_age) = self.get_json("JWKS", &url).await?;
        let doc: JwksDocument = serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
            what: "JWKS",
            reason: e.to_string(),
        })?;
        let mut set = KeySet::default();
        for raw in doc.keys {
            match parse_key(raw) {
                Ok(key) => {
                    let key = Arc::new(key);
                    if let Some(kid) = &key.kid {
                        set.by_kid.insert(kid.clone(), Arc::clone(&key));
                    }
                    set.all.push(key);
                }
                Err(reason) => {
                    tracing::debug!(issuer = self.issuer_index, reason, "JWKS key skipped")
                }
            }
        }
        if set.all.is_empty() {
            return Err(FetchError::Invalid {
                what: "JWKS",
                reason: "no usable signature keys".to_owned(),
            });
        }
        Ok((set, max_age))
    }

    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _) = self.get_json("discovery document", &url).await?;
        let doc: DiscoveryDocument =
            serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
                what: "discovery document",
                reason: e.to_string(),
            })?;
        if doc.issuer != issuer {
            return Err(FetchError::Invalid {
                what: "discovery document",
                reason: format!(
                    "its issuer `{}` differs from the configured one",
                    doc.issuer
                ),
            });
        }
        match self.userinfo_endpoint.write() {
            Ok(mut g) => g.clone_from(&doc.userinfo_endpoint),
            Err(p) => p.into_inner().clone_from(&doc.userinfo_endpoint),
        }
        Ok(doc.jwks_uri)
    }

    async fn get_json(
        &self,
        what: &'static str,
        url: &str,
    ) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let mut response = crate::telemetry::traces::traced(self.http.get(url))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Unreachable {
                what,
                reason: if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    "connection failed".to_owned()
                },
            })?;
        crate::telemetry::traces::set_status_code(
            &tracing::Span::current(),
            response.status().as_u16(),
        );
        if !response.status().is_success() {
            return Err(FetchError::Status {
                what,
                status: response.status().as_u16(),
            });
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| FetchError::Unreachable {
                what,
                reason: "connection broke".to_owned(),
            })?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::Invalid {
                    what,
                    reason: "document too large".to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    /// Keeps the key set fresh until the cache is dropped: refreshes at the provider's `max-age`
    /// (bounded), and retries sooner while the provider is failing.
    pub(super) fn spawn_refresher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(cache) = weak.upgrade() else { return };
                let ok = cache.refresh_if_due(Duration::from_secs(1)).await.is_ok();
                let wait = if ok {
                    failures = 0;
                    *lock(&cache.next_refresh)
                } else {
                    failures = failures.saturating_add(1);
                    Duration::from_secs(2u64.saturating_pow(failures.min(5))).min(MIN_REFRESH)
                };
                drop(cache);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct DiscoveryDocument {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

/// How many keys of a JWKS document the verifier can use, and how many it holds (`doctor`).
pub(crate) fn usable_keys(body: &[u8]) -> Result<(usize, usize), String> {
    let doc: JwksDocument =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document ({e})"))?;
    let total = doc.keys.len();
    let usable = doc
        .keys
        .into_iter()
        .filter(|k| parse_key(k.clone()).is_ok())
        .count();
    Ok((usable, total))
}

fn parse_max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Turns one JWK into a verification key, refusing anything that is not a public signature key
/// whose declared `alg` agrees with its type.
fn parse_key(raw: serde_json::Value) -> Result<VerifyKey, &'static str> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|_| "unparseable JWK")?;
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err("not a signature key");
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| "invalid key material")?;
            if modulus_bits(&n) < MIN_RSA_BITS {
                return Err("RSA key shorter than 2048 bits");
            }
            Family::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Family::Ed25519
        }
        // Symmetric keys never come from a JWKS we trust: they would turn into HMAC secrets.
        _ => return Err("unsupported key type"),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(key_algorithm(a).ok_or("unsupported alg")?),
    };
    let key = VerifyKey {
        kid: jwk.common.key_id.clone(),
        key: DecodingKey::from_jwk(&jwk).map_err(|_| "invalid key material")?,
        alg,
        family,
    };
    if let Some(a) = alg
        && !key.fits(a)
    {
        return Err("alg contradicts the key type");
    }
    Ok(key)
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    #[test]
    fn symmetric_and_encryption_keys_are_refused() {
        assert!(parse_key(json!({"kty":"oct","k":"c2VjcmV0","alg":"HS256"})).is_err());
        assert!(
            parse_key(json!({"kty":"RSA","n":RSA_N,"e":"AQAB","use":"enc","kid":"e"})).is_err()
        );
    }

    #[test]
    fn alg_must_agree_with_key_type() {
        assert!(parse_key(json!({"kty":"RSA","n":RSA_N,"e":"AQAB","alg":"ES256"})).is_err());
        let key = parse_key(json!({"kty":"RSA","n":RSA_N,"e":"AQAB","alg":"RS256","kid":"a"}))
            .expect("valid RSA key");
        assert!(key.fits(Algorithm::RS256));
        assert!(!key.fits(Algorithm::PS256), "the JWK pins RS256");
        assert!(!key.fits(Algorithm::HS256));
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused_counting_the_modulus_exactly() {
        let jwk: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/rsa-2047-jwk.json")).unwrap();
        assert_eq!(
            parse_key(jwk).err(),
            Some("RSA key shorter than 2048 bits"),
            "256 bytes, 2047 bits"
        );
        // A leading zero byte does not make a key longer.
        let padded = {
            let mut n = vec![0u8];
            n.extend(URL_SAFE_NO_PAD.decode(RSA_N).unwrap());
            URL_SAFE_NO_PAD.encode(n)
        };
        assert!(parse_key(json!({"kty":"RSA","n":padded,"e":"AQAB","alg":"RS256"})).is_ok());
        assert_eq!(modulus_bits(&[0, 0, 0b0100_0000, 0]), 15);
        assert_eq!(modulus_bits(&[0xff; 256]), 2048);
        assert_eq!(modulus_bits(&[0]), 0);
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=300, must-revalidate"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_max_age("no-store"), None);
    }
}
