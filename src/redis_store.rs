//! Redis, shared by every replica: GCRA rate limits in one Lua script, and the token cache
//! (encrypted) with a cross-replica mint lock.
//!
//! Every call is bounded by `timeout_ms` and goes through a circuit breaker, so a Redis outage
//! costs at most one timeout per breaker probe, never one per request. While Redis is unavailable
//! the callers fall back to per-replica state (`on_unavailable = "local"`) or refuse (`"deny"`);
//! the connection manager reconnects by itself when Redis returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::breaker::CircuitBreaker;
use crate::config::{RedisFallback, RedisSettings};
use crate::intellia::MintedToken;
use crate::metrics::Metrics;

/// GCRA with Redis's own clock, so replicas with skewed clocks agree. Returns
/// `{allowed, remaining, retry_after_us, reset_us}`.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
-- %.0f: a bare number would be converted with 14 significant digits, losing microseconds.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + tolerance - new_tat) / interval), 0, new_tat - now}
";

/// Deletes the lock only if it is still ours (compare-and-delete).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Redis could not answer in time (or the breaker is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Redis is unavailable")]
pub struct Unavailable;

/// A GCRA decision from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedDecision {
    pub allowed: bool,
    pub remaining: u32,
    pub retry_after: Duration,
    pub reset: Duration,
}

/// Consecutive failed Redis calls that open the breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SealedToken {
    token: String,
    expires_at: i64,
    user_id: String,
    organization_id: String,
    role: String,
}

pub struct RedisStore {
    connection: RwLock<Option<ConnectionManager>>,
    connected: AtomicBool,
    breaker: CircuitBreaker,
    timeout: Duration,
    prefix: String,
    fallback: RedisFallback,
    gcra: redis::Script,
    unlock: redis::Script,
    cipher: Aes256Gcm,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Derives the token-cache key: HKDF-SHA256 over the configured secret (or the API key).
fn cache_cipher(material: &SecretString) -> Aes256Gcm {
    let hk = hkdf::Hkdf::<Sha256>::new(
        Some(b"intellia-token-broker/redis-token-cache/v1"),
        material.expose_secret().as_bytes(),
    );
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hk.expand(b"aes-256-gcm", &mut key);
    let cipher = Aes256Gcm::new(&key.into());
    key.fill(0);
    cipher
}

impl RedisStore {
    /// Builds the store and starts connecting in the background: a broker starting while Redis
    /// is down still starts, and uses its fallback until Redis answers.
    pub fn start(
        settings: &RedisSettings,
        key_material: &SecretString,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisStore>, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("config key `redis.url`: {}", e.category()))?;
        let store = Arc::new(RedisStore {
            connection: RwLock::new(None),
            connected: AtomicBool::new(false),
            breaker: CircuitBreaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN),
            timeout: Duration::from_millis(settings.timeout_ms),
            prefix: settings.key_prefix.clone(),
            fallback: settings.on_unavailable,
            gcra: redis::Script::new(GCRA),
            unlock: redis::Script::new(UNLOCK),
            cipher: cache_cipher(key_material),
            metrics,
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                match redis::aio::ConnectionManager::new_with_config(client.clone(), config).await {
                    Ok(manager) => {
                        let Some(store) = weak.upgrade() else { return };
                        match store.connection.write() {
                            Ok(mut g) => *g = Some(manager),
                            Err(p) => *p.into_inner() = Some(manager),
                        }
                        store.connected.store(true, Ordering::Release);
                        store.metrics.redis_up.set(1);
                        tracing::info!("Redis connected");
                        return;
                    }
                    Err(e) => {
                        if weak.strong_count() == 0 {
                            return;
                        }
                        tracing::warn!(
                            error = e.category(),
                            "Redis not reachable yet; using the fallback"
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(store)
    }

    pub fn fallback(&self) -> RedisFallback {
        self.fallback
    }

    fn connection(&self) -> Option<ConnectionManager> {
        match self.connection.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Runs one Redis operation under the timeout and the breaker.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(connection) = self.connection() else {
            return Err(Unavailable);
        };
        if !self.breaker.allow() {
            return Err(Unavailable);
        }
        match tokio::time::timeout(self.timeout, op(connection)).await {
            Ok(Ok(value)) => {
                if self.breaker.success() {
                    tracing::info!("Redis is back; shared limits and cache resumed");
                }
                self.metrics.redis_up.set(1);
                Ok(value)
            }
            outcome => {
                match &outcome {
                    Ok(Err(e)) => tracing::debug!(error = %e, "Redis call failed"),
                    _ => tracing::debug!(
                        timeout_ms = self.timeout.as_millis() as u64,
                        "Redis call timed out"
                    ),
                }
                self.metrics.redis_failures.inc();
                if self.breaker.failure() {
                    self.metrics.redis_up.set(0);
                    tracing::warn!(fallback = ?self.fallback, "Redis unavailable; circuit open");
                }
                Err(Unavailable)
            }
        }
    }

    /// A hashed, hash-tagged key: no user id is stored in clear, and one user's keys live in one
    /// Redis Cluster slot.
    fn key(&self, subject: &str, kind: &str) -> String {
        let digest = Sha256::digest(subject.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{{{hex}}}:{kind}", self.prefix)
    }

    /// One GCRA decision for `subject` under a limit of `burst` per `burst × interval`.
    pub async fn gcra(
        &self,
        limit: &'static str,
        subject: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<SharedDecision, Unavailable> {
        let key = self.key(subject, limit);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let script = &self.gcra;
        let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) = self
            .call(|mut c| async move {
                script
                    .key(key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(SharedDecision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: micros(retry_us),
            reset: micros(reset_us),
        })
    }

    /// The user's shared token, if another replica minted one that is still fresh.
    pub async fn get_token(&self, user_id: &str) -> Result<Option<MintedToken>, Unavailable> {
        let key = self.key(user_id, "token");
        let sealed: Option<Vec<u8>> = self
            .call(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        Ok(sealed.and_then(|bytes| self.open(user_id, &bytes)))
    }

    /// Shares a minted token until it is no longer fresh (`ttl`).
    pub async fn put_token(&self, minted: &MintedToken, ttl: Duration) -> Result<(), Unavailable> {
        if ttl.is_zero() {
            return Ok(());
        }
        let key = self.key(&minted.user_id, "token");
        let sealed = self.seal(minted);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(sealed)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Takes the user's mint lock for `ttl`; returns the lock's token when it is ours.
    pub async fn lock(&self, user_id: &str, ttl: Duration) -> Result<Option<String>, Unavailable> {
        let key = self.key(user_id, "lock");
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(1000).max(1);
        let value = token.clone();
        let acquired: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(acquired.map(|_| token))
    }

    pub async fn unlock(&self, user_id: &str, token: &str) {
        let key = self.key(user_id, "lock");
        let script = &self.unlock;
        let token = token.to_owned();
        let _ = self
            .call(
                |mut c| async move { script.key(key).arg(token).invoke_async::<i64>(&mut c).await },
            )
            .await;
    }

    /// AES-256-GCM with a random nonce; the user id is associated data, so an entry copied to
    /// another user's key does not decrypt.
    fn seal(&self, minted: &MintedToken) -> Vec<u8> {
        let plain = SealedToken {
            token: minted.token.expose_secret().to_owned(),
            expires_at: minted.expires_at.unix_timestamp(),
            user_id: minted.user_id.clone(),
            organization_id: minted.organization_id.clone(),
            role: minted.role.clone(),
        };
        let mut json = serde_json::to_vec(&plain).unwrap_or_default();
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &json,
                    aad: minted.user_id.as_bytes(),
                },
            )
            .unwrap_or_default();
        json.fill(0);
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    fn open(&self, user_id: &str, bytes: &[u8]) -> Option<MintedToken> {
        if bytes.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let mut plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: user_id.as_bytes(),
                },
            )
            .ok()?;
        let parsed: Option<SealedToken> = serde_json::from_slice(&plain).ok();
        plain.fill(0);
        let parsed = parsed?;
        Some(MintedToken {
            token: SecretString::from(parsed.token),
            expires_at: OffsetDateTime::from_unix_timestamp(parsed.expires_at).ok()?,
            user_id: parsed.user_id,
            organization_id: parsed.organization_id,
            role: parsed.role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_are_bound_to_their_user() {
        let cipher = cache_cipher(&SecretString::from("material"));
        let store_cipher = |user: &str, bytes: &[u8]| {
            let (nonce, sealed) = bytes.split_at(12);
            let nonce: [u8; 12] = nonce.try_into().unwrap();
            cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: user.as_bytes(),
                    },
                )
                .is_ok()
        };
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: b"{}",
                    aad: b"alice",
                },
            )
            .unwrap();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        assert!(store_cipher("alice", &bytes));
        assert!(!store_cipher("mallory", &bytes));
    }
}
