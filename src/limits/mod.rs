//! Rate limits: per verified user, per client IP, and toward Intellia as a whole.
//!
//! Each limit is a GCRA bucket: `burst` is the capacity, `per_minute`/`per_second` the refill rate.
//! With Redis the buckets are shared by every replica ([`shared`]: every bucket one request needs in
//! one round trip, on Redis's clock); without it, or while Redis is unavailable under
//! `on_unavailable = "local"`, each replica keeps its own ([`local`]) holding 1/replicas of every
//! limit.

pub(crate) mod failures;
pub(crate) mod gcra;
mod local;
mod shared;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{RateLimitSettings, RedisFallback};
use crate::identity::UserId;
use crate::redis::{RedisStore, Unavailable};
use local::LocalLimits;
use shared::SharedLimits;

/// Why a request may not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// The limit is spent.
    Limited(RateLimitStatus),
    /// Limits are shared through Redis, Redis is unavailable, and the operator chose `deny`.
    Unavailable,
}

/// One limit's state after a decision: what the draft-ietf-httpapi-ratelimit-headers fields and,
/// on rejection, `Retry-After` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
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

impl RateLimitStatus {
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

/// What one limit is: its name, window and the two shapes of its bucket.
pub(crate) struct Shape {
    pub name: &'static str,
    pub window: u32,
    /// The replica-local bucket (a share of the limit when replicas share it through Redis).
    pub local_rate: u32,
    pub local_burst: u32,
    /// The whole limit, as Redis enforces it for all replicas together.
    pub shared_interval: Duration,
    pub shared_burst: u32,
}

impl Shape {
    fn new(name: &'static str, window: u32, rate: u32, burst: u32, replicas: u32) -> Shape {
        let rate = rate.max(1);
        let burst = burst.max(1);
        let replicas = replicas.max(1);
        Shape {
            name,
            window,
            local_rate: (rate / replicas).max(1),
            local_burst: (burst / replicas).max(1),
            shared_interval: Duration::from_secs(u64::from(window)) / rate,
            shared_burst: burst,
        }
    }

    /// A refusal that tells the client to wait `wait`.
    fn refused(&self, quota: u32, wait: Duration) -> RateLimitStatus {
        let secs = ceil_secs(wait).max(1);
        RateLimitStatus {
            name: self.name,
            quota,
            window: self.window,
            remaining: 0,
            reset_secs: secs,
            retry_after_secs: secs,
        }
    }
}

/// The address a client is limited by: IPv4 as is, IPv6 cut to its first `prefix` bits (a
/// subscriber owns at least a /64 and can pick any address in it).
pub(crate) fn bucket_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Which bucket of a limit a request is charged to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    User(&'a UserId),
    Ip(IpAddr),
    Upstream,
}

/// A request's limits decided in order: the tightest that passed, or the first refusal (later
/// buckets are then not charged).
pub(crate) type Verdict = Result<Option<RateLimitStatus>, RateLimitStatus>;

/// A store of buckets.
pub(crate) trait Buckets {
    /// Decides `checks` in order, as one operation.
    async fn decide(&self, checks: &[(&Shape, Subject<'_>)]) -> Result<Verdict, Unavailable>;
}

/// The keys one token request is limited by.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestKeys<'a> {
    pub ip: Option<IpAddr>,
    pub user: Option<&'a UserId>,
}

/// All configured limits. A limit left out of the configuration is simply absent.
pub struct Limits {
    per_user: Option<Shape>,
    per_ip: Option<Shape>,
    /// IPv6 clients share one bucket per prefix of this length.
    ipv6_prefix: u8,
    upstream: Option<Shape>,
    local: LocalLimits,
    shared: Option<SharedLimits>,
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
    /// Limits shared through Redis when `shared` is given; the local fallback then holds
    /// 1/`replicas` of each limit.
    pub fn new(
        settings: &RateLimitSettings,
        shared: Option<Arc<RedisStore>>,
        replicas: u32,
    ) -> Limits {
        let replicas = if shared.is_some() { replicas } else { 1 };
        let per_user = settings
            .per_user
            .map(|l| Shape::new("user", 60, l.per_minute.get(), l.burst.get(), replicas));
        let per_ip = settings
            .per_ip
            .map(|l| Shape::new("ip", 60, l.per_minute.get(), l.burst.get(), replicas));
        let upstream = settings
            .upstream
            .map(|l| Shape::new("upstream", 1, l.per_second.get(), l.burst.get(), replicas));
        Limits {
            ipv6_prefix: settings.per_ip.map_or(64, |l| l.ipv6_prefix.get()),
            local: LocalLimits::new(per_user.as_ref(), per_ip.as_ref(), upstream.as_ref()),
            shared: shared.map(SharedLimits::new),
            per_user,
            per_ip,
            upstream,
        }
    }

    /// Decides through Redis when limits are shared, else (or on Redis failure, as configured)
    /// locally.
    async fn decide(&self, checks: &[(&Shape, Subject<'_>)]) -> Result<Verdict, LimitError> {
        if checks.is_empty() {
            return Ok(Ok(None));
        }
        if let Some(shared) = &self.shared {
            match shared.decide(checks).await {
                Ok(verdict) => return Ok(verdict),
                Err(Unavailable) if shared.fallback() == RedisFallback::Deny => {
                    return Err(LimitError::Unavailable);
                }
                Err(Unavailable) => {}
            }
        }
        match self.local.decide(checks).await {
            Ok(verdict) => Ok(verdict),
            Err(Unavailable) => Err(LimitError::Unavailable),
        }
    }

    /// Charges one token request to its per-IP and per-user buckets, in that order, at most one
    /// Redis round trip. `Ok(None)` when neither limit is configured.
    pub async fn check(
        &self,
        keys: RequestKeys<'_>,
    ) -> Result<Option<RateLimitStatus>, LimitError> {
        let ip = self.per_ip.as_ref().zip(
            keys.ip
                .map(|ip| Subject::Ip(bucket_of(ip, self.ipv6_prefix))),
        );
        let user = self.per_user.as_ref().zip(keys.user.map(Subject::User));
        let verdict = match (ip, user) {
            (Some(ip), Some(user)) => self.decide(&[ip, user]).await?,
            (Some(one), None) | (None, Some(one)) => self.decide(&[one]).await?,
            (None, None) => return Ok(None),
        };
        verdict.map_err(LimitError::Limited)
    }

    /// Whether decisions go to Redis (shared by the replicas).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Counts one call toward Intellia.
    pub async fn check_upstream(&self) -> Result<(), LimitError> {
        let Some(shape) = &self.upstream else {
            return Ok(());
        };
        self.decide(&[(shape, Subject::Upstream)])
            .await?
            .map(|_| ())
            .map_err(LimitError::Limited)
    }

    /// Drops local state of keys whose buckets have refilled completely.
    pub fn sweep(&self) {
        self.local.sweep();
    }

    /// Number of locally tracked keys, for metrics and the memory benchmark.
    pub fn tracked_keys(&self) -> usize {
        self.local.tracked_keys()
    }
}

#[cfg(test)]
mod tests;
