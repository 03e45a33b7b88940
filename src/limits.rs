//! Rate limits: per verified user, per client IP, and toward Intellia as a whole.
//!
//! Each limit is a GCRA bucket: `burst` is the capacity, `per_minute`/`per_second` the refill rate.
//! With Redis the buckets are shared by every replica (one Lua script, Redis's clock); without it,
//! or while Redis is unavailable under `on_unavailable = "local"`, each replica keeps its own
//! (`governor`, lock-free atomics) holding 1/replicas of every limit. Idle local keys are evicted by
//! the broker's periodic housekeeping so memory stays bounded by the number of recently active users and addresses.

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpResponseBuilder;
use governor::clock::{Clock, DefaultClock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{RateLimitSettings, RedisFallback};
use crate::redis_store::{RedisStore, SharedDecision};

/// Why a request may not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// The limit is spent.
    Limited(RateLimitHeaders),
    /// Limits are shared through Redis, Redis is unavailable, and the operator chose `deny`.
    Unavailable,
}

/// One limit's state after a decision, enough to write the draft-ietf-httpapi-ratelimit-headers
/// fields and, on rejection, `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub name: &'static str,
    /// Quota units per window (the bucket's capacity).
    pub quota: u32,
    /// Window in seconds (60 for per-minute limits, 1 for per-second).
    pub window: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again (on rejection: until the next request may pass).
    pub reset_secs: u64,
    /// Whole seconds before retrying; at least 1. Meaningful on rejection only.
    pub retry_after_secs: u64,
}

impl RateLimitHeaders {
    pub fn apply(&self, response: &mut HttpResponseBuilder) {
        response.insert_header((
            "RateLimit-Policy",
            format!("\"{}\";q={};w={}", self.name, self.quota, self.window),
        ));
        response.insert_header((
            "RateLimit",
            format!(
                "\"{}\";r={};t={}",
                self.name, self.remaining, self.reset_secs
            ),
        ));
    }

    /// Of two passed limits, the one a client should be told about: the fewest requests left,
    /// then the longest wait to refill.
    pub fn tightest(a: Option<Self>, b: Self) -> Self {
        match a {
            Some(a)
                if (a.remaining, std::cmp::Reverse(a.reset_secs))
                    <= (b.remaining, std::cmp::Reverse(b.reset_secs)) =>
            {
                a
            }
            _ => b,
        }
    }
}

type KeyedLimiter<K> =
    RateLimiter<K, DashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct Shape {
    name: &'static str,
    window: u32,
    /// The replica-local bucket (a share of the limit when replicas share it through Redis).
    quota: Quota,
    /// The whole limit, as Redis enforces it for all replicas together.
    shared_interval: Duration,
    shared_burst: u32,
}

impl Shape {
    fn new(name: &'static str, window: u32, rate: u32, burst: u32, replicas: u32) -> Option<Shape> {
        let replicas = replicas.max(1);
        let local_rate = NonZeroU32::new((rate / replicas).max(1))?;
        let local_burst = NonZeroU32::new((burst / replicas).max(1))?;
        let window_len = Duration::from_secs(u64::from(window));
        let quota = Quota::with_period(window_len / local_rate.get())?.allow_burst(local_burst);
        Some(Shape {
            name,
            window,
            quota,
            shared_interval: window_len / NonZeroU32::new(rate)?.get(),
            shared_burst: NonZeroU32::new(burst)?.get(),
        })
    }

    fn shared(&self, d: SharedDecision) -> Result<RateLimitHeaders, RateLimitHeaders> {
        let headers = RateLimitHeaders {
            name: self.name,
            quota: self.shared_burst,
            window: self.window,
            remaining: d.remaining,
            reset_secs: ceil_secs(d.reset),
            retry_after_secs: ceil_secs(d.retry_after).max(1),
        };
        if d.allowed {
            Ok(headers)
        } else {
            Err(RateLimitHeaders {
                remaining: 0,
                reset_secs: headers.retry_after_secs,
                ..headers
            })
        }
    }

    fn passed(&self, snapshot: &governor::middleware::StateSnapshot) -> RateLimitHeaders {
        let remaining = snapshot.remaining_burst_capacity();
        let missing = self.quota.burst_size().get().saturating_sub(remaining);
        let refill = self.quota.replenish_interval() * missing;
        RateLimitHeaders {
            name: self.name,
            quota: self.quota.burst_size().get(),
            window: self.window,
            remaining,
            reset_secs: ceil_secs(refill),
            retry_after_secs: 1,
        }
    }

    fn rejected(&self, wait: Duration) -> RateLimitHeaders {
        let secs = ceil_secs(wait).max(1);
        RateLimitHeaders {
            name: self.name,
            quota: self.quota.burst_size().get(),
            window: self.window,
            remaining: 0,
            reset_secs: secs,
            retry_after_secs: secs,
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

struct Keyed<K: Hash + Eq + Clone> {
    shape: Shape,
    limiter: KeyedLimiter<K>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(shape: Shape) -> Self {
        let limiter: KeyedLimiter<K> = RateLimiter::new(
            shape.quota,
            DashMapStateStore::default(),
            DefaultClock::default(),
        );
        Keyed { shape, limiter }
    }

    fn check(&self, key: &K) -> Result<RateLimitHeaders, RateLimitHeaders> {
        match self.limiter.check_key(key) {
            Ok(snapshot) => Ok(self.shape.passed(&snapshot)),
            Err(not_until) => Err(self
                .shape
                .rejected(not_until.wait_time_from(self.limiter_clock().now()))),
        }
    }

    fn limiter_clock(&self) -> &QuantaClock {
        self.limiter.clock()
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// A user's local bucket key: a 64-bit keyed hash of the user id. Fixed-size keys live inside the
/// limiter's table, so a million users cost no million small allocations (which would fragment
/// the heap and keep memory resident after their buckets are evicted), and 16-byte entries keep
/// the table at about 35 MB per million users. The hash key is random per process, so nobody can
/// choose ids that share a bucket; by chance, two of a million users share one with probability
/// about 3 in 100 million, and then only get limited a little sooner.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct UserKey(u64);

struct UserKeyHasher(RandomState);

impl UserKeyHasher {
    fn new() -> Self {
        UserKeyHasher(RandomState::new())
    }

    fn key(&self, user_id: &str) -> UserKey {
        UserKey(self.0.hash_one(user_id))
    }
}

/// All configured limits. A limit left out of the configuration is simply absent.
pub struct Limits {
    per_user: Option<Keyed<UserKey>>,
    user_keys: UserKeyHasher,
    per_ip: Option<Keyed<IpAddr>>,
    upstream: Option<(Shape, DirectLimiter)>,
    shared: Option<Arc<RedisStore>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("per_user", &self.per_user.is_some())
            .field("per_ip", &self.per_ip.is_some())
            .field("upstream", &self.upstream.is_some())
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl Limits {
    /// Per-replica limits only.
    pub fn new(settings: &RateLimitSettings) -> Limits {
        Self::with_shared(settings, None, 1)
    }

    /// Limits shared through Redis when `shared` is given; the local fallback then holds
    /// 1/`replicas` of each limit.
    pub fn with_shared(
        settings: &RateLimitSettings,
        shared: Option<Arc<RedisStore>>,
        replicas: u32,
    ) -> Limits {
        let replicas = if shared.is_some() { replicas } else { 1 };
        Limits {
            per_user: settings
                .per_user
                .and_then(|l| Shape::new("user", 60, l.per_minute, l.burst, replicas))
                .map(Keyed::new),
            per_ip: settings
                .per_ip
                .and_then(|l| Shape::new("ip", 60, l.per_minute, l.burst, replicas))
                .map(Keyed::new),
            upstream: settings
                .upstream
                .and_then(|l| Shape::new("upstream", 1, l.per_second, l.burst, replicas))
                .map(|shape| {
                    let limiter: DirectLimiter = RateLimiter::new(
                        shape.quota,
                        InMemoryState::default(),
                        DefaultClock::default(),
                    );
                    (shape, limiter)
                }),
            shared,
            user_keys: UserKeyHasher::new(),
        }
    }

    /// Asks Redis first when limits are shared; `None` means "decide locally".
    async fn shared_decision(
        &self,
        shape: &Shape,
        subject: &str,
    ) -> Option<Result<RateLimitHeaders, LimitError>> {
        let store = self.shared.as_ref()?;
        match store
            .gcra(
                shape.name,
                subject,
                shape.shared_interval,
                shape.shared_burst,
            )
            .await
        {
            Ok(decision) => Some(shape.shared(decision).map_err(LimitError::Limited)),
            Err(_) if store.fallback() == RedisFallback::Deny => Some(Err(LimitError::Unavailable)),
            Err(_) => None,
        }
    }

    /// `Ok(None)` when no such limit is configured.
    pub async fn check_user(&self, user_id: &str) -> Result<Option<RateLimitHeaders>, LimitError> {
        let Some(limit) = &self.per_user else {
            return Ok(None);
        };
        if let Some(decision) = self.shared_decision(&limit.shape, user_id).await {
            return decision.map(Some);
        }
        limit
            .check(&self.user_keys.key(user_id))
            .map(Some)
            .map_err(LimitError::Limited)
    }

    pub async fn check_ip(&self, ip: &IpAddr) -> Result<Option<RateLimitHeaders>, LimitError> {
        let Some(limit) = &self.per_ip else {
            return Ok(None);
        };
        if self.shared.is_some()
            && let Some(decision) = self.shared_decision(&limit.shape, &ip.to_string()).await
        {
            return decision.map(Some);
        }
        limit.check(ip).map(Some).map_err(LimitError::Limited)
    }

    /// Counts one call toward Intellia.
    pub async fn check_upstream(&self) -> Result<(), LimitError> {
        let Some((shape, limiter)) = &self.upstream else {
            return Ok(());
        };
        if let Some(decision) = self.shared_decision(shape, "all").await {
            return decision.map(|_| ());
        }
        match limiter.check() {
            Ok(_) => Ok(()),
            Err(not_until) => Err(LimitError::Limited(
                shape.rejected(not_until.wait_time_from(limiter.clock().now())),
            )),
        }
    }

    /// Drops the state of keys whose buckets have refilled completely: they carry no
    /// information a fresh bucket would not.
    pub fn sweep(&self) {
        if let Some(l) = &self.per_user {
            l.sweep();
        }
        if let Some(l) = &self.per_ip {
            l.sweep();
        }
    }

    /// Number of tracked keys, for metrics and the memory benchmark.
    pub fn tracked_keys(&self) -> usize {
        self.per_user.as_ref().map_or(0, |l| l.limiter.len())
            + self.per_ip.as_ref().map_or(0, |l| l.limiter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PerMinuteLimit, PerSecondLimit};

    fn limits(per_minute: u32, burst: u32) -> Limits {
        Limits::new(&RateLimitSettings {
            per_user: Some(PerMinuteLimit { per_minute, burst }),
            per_ip: None,
            upstream: Some(PerSecondLimit {
                per_second: 1,
                burst: 2,
            }),
        })
    }

    #[tokio::test]
    async fn admits_exactly_burst_then_rejects() {
        let l = limits(10, 5);
        let user = "alice".to_owned();
        for n in 0..5u32 {
            let h = l
                .check_user(&user)
                .await
                .expect("within burst")
                .expect("configured");
            assert_eq!(h.remaining, 4 - n);
            assert_eq!(h.quota, 5);
            assert_eq!(h.window, 60);
        }
        let Err(LimitError::Limited(rejected)) = l.check_user(&user).await else {
            panic!("burst spent");
        };
        assert_eq!(rejected.remaining, 0);
        // 10 per minute refills one cell every 6 s.
        assert!((1..=6).contains(&rejected.retry_after_secs), "{rejected:?}");
        // Another key has its own bucket.
        assert!(l.check_user("bob").await.is_ok());
    }

    #[tokio::test]
    async fn reset_counts_seconds_to_full_bucket() {
        let l = limits(60, 3);
        let user = "carol".to_owned();
        let first = l.check_user(&user).await.unwrap().unwrap();
        assert_eq!(first.remaining, 2);
        assert_eq!(first.reset_secs, 1);
        let second = l.check_user(&user).await.unwrap().unwrap();
        assert_eq!(second.reset_secs, 2);
    }

    #[tokio::test]
    async fn upstream_limit_is_global() {
        let l = limits(10, 5);
        assert!(l.check_upstream().await.is_ok());
        assert!(l.check_upstream().await.is_ok());
        assert!(l.check_upstream().await.is_err());
    }

    #[tokio::test]
    async fn absent_limits_pass() {
        let l = Limits::new(&RateLimitSettings::default());
        assert_eq!(l.check_user("x").await, Ok(None));
        assert_eq!(l.check_ip(&IpAddr::from([127, 0, 0, 1])).await, Ok(None));
        assert!(l.check_upstream().await.is_ok());
    }

    #[test]
    fn local_share_divides_by_replicas() {
        let shape = Shape::new("user", 60, 10, 5, 3).unwrap();
        assert_eq!(shape.quota.burst_size().get(), 1);
        assert_eq!(shape.shared_burst, 5);
        assert_eq!(shape.shared_interval, Duration::from_secs(6));
    }

    #[test]
    fn tightest_prefers_fewest_remaining() {
        let a = RateLimitHeaders {
            name: "ip",
            quota: 20,
            window: 60,
            remaining: 19,
            reset_secs: 3,
            retry_after_secs: 1,
        };
        let b = RateLimitHeaders {
            name: "user",
            remaining: 2,
            ..a
        };
        assert_eq!(RateLimitHeaders::tightest(Some(a), b).name, "user");
        assert_eq!(RateLimitHeaders::tightest(Some(b), a).name, "user");
    }

    #[test]
    fn header_syntax_follows_the_draft() {
        let h = RateLimitHeaders {
            name: "user",
            quota: 5,
            window: 60,
            remaining: 0,
            reset_secs: 12,
            retry_after_secs: 12,
        };
        let mut b = actix_web::HttpResponse::Ok();
        h.apply(&mut b);
        let resp = b.finish();
        assert_eq!(
            resp.headers().get("RateLimit-Policy").unwrap(),
            "\"user\";q=5;w=60"
        );
        assert_eq!(
            resp.headers().get("RateLimit").unwrap(),
            "\"user\";r=0;t=12"
        );
    }
}
