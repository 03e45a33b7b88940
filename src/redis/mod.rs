//! Redis, shared by every replica: one connection, every call bounded by `timeout_ms` and behind
//! a circuit breaker, so an outage costs at most one timeout per breaker probe, never one per
//! request. What is stored there is decided by the limits ([`gcra`]) and the token cache
//! ([`seal`]); this module only moves bytes and reports `Unavailable`.

pub(crate) mod connection;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::breaker::CircuitBreaker;
use crate::config::{RedisFallback, RedisSettings};
use crate::secrets::SecretCell;
use crate::telemetry::metrics::Metrics;
pub(crate) use connection::Connection;
use connection::{Connector, FailureReason, describe};

/// Redis could not answer in time (or the breaker is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Redis is unavailable")]
pub(crate) struct Unavailable;

/// Consecutive failed Redis calls that open the breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// `broker_redis_up` reads 1 only when no call failed for this long.
const HEALTHY_AFTER: Duration = Duration::from_secs(2);
/// How often the supervisor looks at the connection (and pings Redis when no call did).
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// How long a thread whose own connection could not be made uses the shared one before trying
/// again.
const LOCAL_RETRY: Duration = Duration::from_secs(5);

/// Deletes the lock only if it is still ours (compare-and-delete).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Distinguishes stores in the per-thread connection table (tests run several in one process).
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// A thread's own connection to a standalone Redis.
struct LocalConnection {
    store: u64,
    generation: u64,
    /// `None` while it is being made (or after a failed attempt, until `retry_at`).
    connection: Option<Connection>,
    retry_at: Instant,
}

/// What a thread's own connection table says for this store.
enum Local {
    /// The thread has its connection.
    Ready(Connection),
    /// It is being made, or the last attempt failed recently: use the shared one meanwhile.
    Pending,
    /// Start making it (and use the shared one meanwhile).
    Connect,
}

thread_local! {
    /// Each actix worker is a single-threaded runtime: with its own multiplexed connection (driven
    /// on that thread) a call costs no cross-thread wake-ups, and the commands of the requests a
    /// worker handles in one turn go out in one write.
    static LOCAL: std::cell::RefCell<Vec<LocalConnection>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub struct RedisStore {
    id: u64,
    connection: RwLock<Option<Connection>>,
    /// Bumped whenever `connection` is replaced (a reconnect after a password rotation); the
    /// per-thread connections of an older generation are dropped and made again.
    generation: AtomicU64,
    connector: Arc<Connector>,
    connected: AtomicBool,
    cluster: bool,
    breaker: CircuitBreaker,
    timeout: Duration,
    prefix: String,
    fallback: RedisFallback,
    unlock: redis::Script,
    metrics: Arc<Metrics>,
    /// When the store was made; the two instants below are milliseconds since then (0 = never).
    epoch: Instant,
    last_success_ms: AtomicU64,
    last_failure_ms: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Builds the store and starts connecting in the background: a broker starting while Redis
    /// is down (or refusing our password) still starts, and uses its fallback until Redis
    /// answers. `password` is `redis.password_file`'s cell from the secrets registry: when it
    /// rotates, the store connects again with the new password and swaps connections once the
    /// new one is authenticated (the old one keeps serving until then).
    pub fn start(
        settings: &RedisSettings,
        password: Option<Arc<SecretCell>>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisStore>, String> {
        crate::http_client::install_crypto_provider();
        let connector = Arc::new(Connector::new(settings, password)?);
        metrics.redis_up.set(0);
        let store = Arc::new(RedisStore {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            connection: RwLock::new(None),
            generation: AtomicU64::new(0),
            connector: Arc::clone(&connector),
            connected: AtomicBool::new(false),
            cluster: connector.is_cluster(),
            breaker: CircuitBreaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN),
            timeout: Duration::from_millis(settings.timeout_ms.get()),
            prefix: settings.key_prefix.as_str().to_owned(),
            fallback: settings.on_unavailable,
            unlock: redis::Script::new(UNLOCK),
            metrics,
            epoch: Instant::now(),
            last_success_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
        });
        tokio::spawn(supervise(Arc::downgrade(&store), connector));
        Ok(store)
    }

    /// What `check-config` can know without connecting: the URL parses and `ca_file` holds a
    /// PEM bundle.
    pub fn check_settings(settings: &RedisSettings) -> Result<(), String> {
        Connector::new(settings, None).map(|_| ())
    }

    pub fn fallback(&self) -> RedisFallback {
        self.fallback
    }

    /// Whether keys of one request may live on different shards (see [`gcra`]).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    fn shared_connection(&self) -> Option<Connection> {
        match self.connection.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// This thread's connection when it has one (standalone Redis, current-thread runtime), else
    /// the shared one; a thread without one starts making it in the background.
    fn connection(self: &Arc<Self>) -> Option<Connection> {
        let shared = self.shared_connection()?;
        // Only for thread-per-core runtimes (the actix workers): on a work-stealing runtime the
        // one shared connection batches better.
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if self.cluster || !current_thread {
            return Some(shared);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        let fresh = || LocalConnection {
            store: self.id,
            generation,
            connection: None,
            retry_at: now + LOCAL_RETRY,
        };
        let local = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            match local.iter_mut().find(|l| l.store == self.id) {
                Some(entry) if entry.generation == generation => {
                    if let Some(connection) = &entry.connection {
                        return Local::Ready(connection.clone());
                    }
                    if now < entry.retry_at {
                        return Local::Pending;
                    }
                    entry.retry_at = now + LOCAL_RETRY;
                    Local::Connect
                }
                Some(entry) => {
                    *entry = fresh();
                    Local::Connect
                }
                None => {
                    local.push(fresh());
                    Local::Connect
                }
            }
        });
        match local {
            Local::Ready(own) => return Some(own),
            Local::Connect => {
                let store = Arc::downgrade(self);
                let connector = Arc::clone(&self.connector);
                let thread = std::thread::current().id();
                // On a worker's current-thread runtime this runs on this very thread, so the
                // connection lands in this thread's table; a task that ran elsewhere drops it.
                tokio::spawn(async move {
                    let Ok(connection) = connector.connect().await else {
                        return;
                    };
                    let Some(store) = store.upgrade() else { return };
                    if std::thread::current().id() != thread {
                        return;
                    }
                    LOCAL.with(|local| {
                        if let Some(entry) = local
                            .borrow_mut()
                            .iter_mut()
                            .find(|l| l.store == store.id && l.generation == generation)
                        {
                            entry.connection = Some(connection);
                        }
                    });
                });
            }
            Local::Pending => {}
        }
        Some(shared)
    }

    fn set_connection(&self, connection: Connection) {
        match self.connection.write() {
            Ok(mut g) => *g = Some(connection),
            Err(p) => *p.into_inner() = Some(connection),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.connected.store(true, Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn record_success(&self) {
        let now = self.now_ms();
        self.last_success_ms.store(now, Ordering::Relaxed);
        let failed = self.last_failure_ms.load(Ordering::Relaxed);
        if failed == 0 || now.saturating_sub(failed) >= HEALTHY_AFTER.as_millis() as u64 {
            self.metrics.redis_up.set(1);
        }
    }

    fn record_failure(&self, reason: FailureReason) {
        let now = self.now_ms();
        let previous = self.last_failure_ms.swap(now, Ordering::Relaxed);
        self.metrics.redis_up.set(0);
        self.metrics.count_redis_failure(reason.label());
        // One warning per episode (the first failure after a healthy spell); the rest at debug.
        if previous == 0 || now.saturating_sub(previous) >= HEALTHY_AFTER.as_millis() as u64 {
            tracing::warn!(reason = reason.label(), "Redis call failed");
        }
    }

    /// Runs one Redis operation under the timeout and the breaker; `op` names it in
    /// `broker_redis_duration_seconds`.
    pub(crate) async fn call<T, F, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        f: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(connection) = self.connection() else {
            return Err(Unavailable);
        };
        if !self.breaker.allow() {
            return Err(Unavailable);
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, f(connection)).await;
        self.metrics.observe_redis(op, started.elapsed());
        let reason = match outcome {
            Ok(Ok(value)) => {
                if self.breaker.success() {
                    tracing::info!("Redis is back; shared limits and cache resumed");
                }
                self.record_success();
                return Ok(value);
            }
            Ok(Err(e)) => {
                let reason = FailureReason::of(&e);
                tracing::debug!(op, reason = reason.label(), error = %describe(&e), "Redis call failed");
                reason
            }
            Err(_) => {
                tracing::debug!(
                    op,
                    timeout_ms = self.timeout.as_millis() as u64,
                    "Redis call timed out"
                );
                FailureReason::Timeout
            }
        };
        self.record_failure(reason);
        if self.breaker.failure() {
            tracing::warn!(fallback = ?self.fallback, reason = reason.label(), "Redis unavailable; circuit open");
        }
        Err(Unavailable)
    }

    /// `PING` (every primary of a cluster), and for a cluster `cluster_state:ok` as a node sees
    /// it: a shard down longer than the node timeout makes the cluster refuse every key.
    async fn probe(self: &Arc<Self>) {
        let cluster = self.cluster;
        let _ = self
            .call("ping", |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await?;
                if cluster {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await?;
                    if !info.contains("cluster_state:ok") {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                            "cluster_state is not ok",
                        )));
                    }
                }
                Ok(())
            })
            .await;
    }

    /// A hashed, hash-tagged key: no user id or address is stored in clear, and one subject's
    /// keys live in one Redis Cluster slot.
    pub(crate) fn key(&self, subject: &str, kind: &str) -> String {
        let digest = Sha256::digest(subject.as_bytes());
        let mut key = String::with_capacity(self.prefix.len() + 36 + kind.len());
        key.push_str(&self.prefix);
        key.push_str(":{");
        crate::hex::push(&mut key, &digest[..16]);
        key.push_str("}:");
        key.push_str(kind);
        key
    }

    pub(crate) async fn get(self: &Arc<Self>, key: String) -> Result<Option<Vec<u8>>, Unavailable> {
        self.call("get", |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    pub(crate) async fn set_px(
        self: &Arc<Self>,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.call("set", |mut c| async move {
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
        self: &Arc<Self>,
        key: String,
        ttl: Duration,
    ) -> Result<Option<String>, Unavailable> {
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let token = crate::hex::encode(&raw);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(1000).max(1);
        let value = token.clone();
        let acquired: Option<String> = self
            .call("lock", |mut c| async move {
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
    pub(crate) async fn unlock(self: &Arc<Self>, key: String, token: &str) {
        let script = &self.unlock;
        let token = token.to_owned();
        let _ = self
            .call("unlock", |mut c| async move {
                script.key(key).arg(token).invoke_async::<i64>(&mut c).await
            })
            .await;
    }
}

/// Why `doctor`'s Redis check failed.
#[derive(Debug)]
pub(crate) enum Diagnosis {
    /// `ca_file` unreadable, the URL refused.
    Config(String),
    Redis(redis::RedisError),
    /// A cluster node says the cluster is not `ok`.
    ClusterState(String),
}

/// One connection as `serve` makes it, `PING` (every primary of a cluster) and for a cluster
/// `cluster_state`; for `doctor`. Returns what was checked.
pub(crate) async fn diagnose(
    settings: &RedisSettings,
    password: Option<Arc<SecretCell>>,
) -> Result<String, Diagnosis> {
    crate::http_client::install_crypto_provider();
    let connector = Connector::new(settings, password).map_err(Diagnosis::Config)?;
    let mut connection = connector.connect().await.map_err(Diagnosis::Redis)?;
    redis::cmd("PING")
        .query_async::<()>(&mut connection)
        .await
        .map_err(Diagnosis::Redis)?;
    if !settings.cluster {
        return Ok("PING".to_owned());
    }
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut connection)
        .await
        .map_err(Diagnosis::Redis)?;
    let state = info
        .lines()
        .find_map(|l| l.strip_prefix("cluster_state:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    if state != "ok" {
        return Err(Diagnosis::ClusterState(state));
    }
    Ok("PING on every primary, cluster_state:ok".to_owned())
}

/// Connects (again when the password rotates), and pings Redis when no call told how it is, so
/// `broker_redis_up` stays true on an idle replica. Ends when the store is dropped.
async fn supervise(store: Weak<RedisStore>, connector: Arc<Connector>) {
    let mut wait = Duration::from_millis(200);
    let mut connected_generation = None;
    loop {
        let Some(this) = store.upgrade() else { return };
        let generation = connector.credentials_generation();
        if connected_generation != Some(generation) {
            let rotated = connected_generation.is_some();
            match connector.connect().await {
                Ok(connection) => {
                    this.set_connection(connection);
                    connected_generation = Some(generation);
                    wait = Duration::from_millis(200);
                    this.record_success();
                    if rotated {
                        tracing::info!("Redis password rotated; reconnected with the new one");
                    } else {
                        tracing::info!(cluster = this.cluster, "Redis connected");
                    }
                }
                Err(e) => {
                    let reason = FailureReason::of(&e);
                    this.record_failure(reason);
                    tracing::warn!(
                        reason = reason.label(),
                        error = %describe(&e),
                        "cannot connect to Redis; {}",
                        if rotated { "keeping the connection made with the previous password" } else { "using the fallback" }
                    );
                    drop(this);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        } else {
            let idle = this
                .now_ms()
                .saturating_sub(this.last_success_ms.load(Ordering::Relaxed));
            let failed_since = this.last_failure_ms.load(Ordering::Relaxed)
                >= this.last_success_ms.load(Ordering::Relaxed);
            if idle >= SUPERVISE_EVERY.as_millis() as u64 || failed_since {
                this.probe().await;
            }
        }
        drop(this);
        tokio::time::sleep(SUPERVISE_EVERY).await;
    }
}
