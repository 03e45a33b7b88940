//! Failed credential attempts per client address (the backend secret): once a client has spent
//! its failures, every attempt from it is refused until the bucket refills, before its credential
//! is even compared. Per replica: guessing a 32-byte secret is hopeless anyway; this keeps a
//! misbehaving caller from hammering the route and the logs.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{RateLimitStatus, bucket_of, ceil_secs};

/// The limit's name in headers, errors and metrics.
pub(crate) const NAME: &str = "backend_failures";

pub(crate) struct FailureLimit {
    per_minute: u32,
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, DefaultClock>,
    /// Clients whose failures are spent, and until when.
    blocked: moka::future::Cache<IpAddr, Instant>,
}

impl std::fmt::Debug for FailureLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimit")
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl FailureLimit {
    pub(crate) fn new(per_minute: u32) -> FailureLimit {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        FailureLimit {
            per_minute: per_minute.get(),
            limiter: RateLimiter::dashmap(Quota::per_minute(per_minute)),
            blocked: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    fn refusal(&self, wait: Duration) -> RateLimitStatus {
        let secs = ceil_secs(wait).max(1);
        RateLimitStatus {
            name: NAME,
            quota: self.per_minute,
            window: 60,
            remaining: 0,
            reset_secs: secs,
            retry_after_secs: secs,
        }
    }

    /// The refusal for a client whose failures are spent.
    pub(crate) async fn blocked(&self, ip: IpAddr) -> Option<RateLimitStatus> {
        let until = self.blocked.get(&bucket_of(ip, 64)).await?;
        let wait = until.saturating_duration_since(Instant::now());
        (!wait.is_zero()).then(|| self.refusal(wait))
    }

    /// Counts one failure; returns the refusal when it spent the client's last one.
    pub(crate) async fn record(&self, ip: IpAddr) -> Option<RateLimitStatus> {
        let key = bucket_of(ip, 64);
        let not_until = self.limiter.check_key(&key).err()?;
        let wait = not_until.wait_time_from(self.limiter.clock().now());
        self.blocked.insert(key, Instant::now() + wait).await;
        Some(self.refusal(wait))
    }

    /// Forgets clients whose buckets have refilled.
    pub(crate) fn sweep(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spent_failures_block_the_client_and_only_it() {
        let limit = FailureLimit::new(3);
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        assert!(limit.blocked(ip).await.is_none());
        for _ in 0..3 {
            assert!(limit.record(ip).await.is_none());
        }
        let refused = limit.record(ip).await.expect("fourth failure refused");
        assert_eq!(refused.name, NAME);
        assert!((1..=20).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(limit.blocked(ip).await.is_some());
        let other: IpAddr = "203.0.113.6".parse().unwrap();
        assert!(limit.blocked(other).await.is_none());
    }
}
