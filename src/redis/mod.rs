//! Redis, shared by every replica: one connection, every call bounded by `timeout_ms` and behind
//! a circuit breaker, so an outage costs at most one timeout per breaker probe, never one per
//! request. What is stored there is decided by the limits ([`gcra`]) and the token cache
//! ([`seal`]); this module only moves bytes and reports `Unavailable`.

pub(crate) mod gcra;
pub(crate) mod seal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngCore;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::breaker::CircuitBreaker;
use crate::config::{RedisFallback, RedisSettings};
use crate::metrics::Metrics;

/// Redis could not answer in time (or the breaker is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Redis is unavailable")]
pub struct Unavailable;

/// Consecutive failed Redis calls that open the breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// Deletes the lock only if it is still ours (compare-and-delete).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct RedisStore {
    connection: RwLock<Option<ConnectionManager>>,
    connected: AtomicBool,
    breaker: CircuitBreaker,
    timeout: Duration,
    prefix: String,
    fallback: RedisFallback,
    unlock: redis::Script,
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

impl RedisStore {
    /// Builds the store and starts connecting in the background: a broker starting while Redis
    /// is down still starts, and uses its fallback until Redis answers.
    pub fn start(
        settings: &RedisSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisStore>, String> {
        let client = redis::Client::open(settings.url.url().as_str())
            .map_err(|e| format!("config key `redis.url`: {}", e.category()))?;
        metrics.redis_up.set(0);
        let store = Arc::new(RedisStore {
            connection: RwLock::new(None),
            connected: AtomicBool::new(false),
            breaker: CircuitBreaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN),
            timeout: Duration::from_millis(settings.timeout_ms.get()),
            prefix: settings.key_prefix.as_str().to_owned(),
            fallback: settings.on_unavailable,
            unlock: redis::Script::new(UNLOCK),
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
    pub(crate) async fn call<T, F, Fut>(&self, op: F) -> Result<T, Unavailable>
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

    /// A hashed, hash-tagged key: no user id or address is stored in clear, and one subject's
    /// keys live in one Redis Cluster slot.
    pub(crate) fn key(&self, subject: &str, kind: &str) -> String {
        let digest = Sha256::digest(subject.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{{{hex}}}:{kind}", self.prefix)
    }

    pub(crate) async fn get(&self, key: String) -> Result<Option<Vec<u8>>, Unavailable> {
        self.call(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await
    }

    pub(crate) async fn set_px(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Takes a lock for `ttl` (`SET NX PX` with a random value); returns the value when it is ours.
    pub(crate) async fn lock(
        &self,
        key: String,
        ttl: Duration,
    ) -> Result<Option<String>, Unavailable> {
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

    /// Releases a lock taken with [`RedisStore::lock`] if it is still ours.
    pub(crate) async fn unlock(&self, key: String, token: &str) {
        let script = &self.unlock;
        let token = token.to_owned();
        let _ = self
            .call(
                |mut c| async move { script.key(key).arg(token).invoke_async::<i64>(&mut c).await },
            )
            .await;
    }
}
