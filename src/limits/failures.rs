//! Wrong credentials per client address (the backend secret): once a client has spent its
//! failures, every further wrong credential from it is refused with 429 until the bucket refills.
//! The caller compares the credential first, so the right one is never refused here: whoever
//! shares or claims an address can spend its allowance, never lock its rightful caller out.
//! Per replica: guessing a 32-byte secret is hopeless anyway; this keeps a misbehaving caller
//! from hammering the route and the logs. IPv6 clients are keyed by their prefix of
//! `rate_limit.per_ip.ipv6_prefix` bits, as the per-IP limit is: one subscriber holds a whole
//! prefix, and a key per address would give them as many allowances as they have addresses.

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
    ipv6_prefix: u8,
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, DefaultClock>,
    /// Clients whose failures are spent, and until when.
    blocked: moka::future::Cache<IpAddr, Instant>,
}

impl std::fmt::Debug for FailureLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimit")
            .field("per_minute", &self.per_minute)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish_non_exhaustive()
    }
}

impl FailureLimit {
    pub(crate) fn new(per_minute: u32, ipv6_prefix: u8) -> FailureLimit {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        FailureLimit {
            per_minute: per_minute.get(),
            ipv6_prefix,
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
        let until = self.blocked.get(&bucket_of(ip, self.ipv6_prefix)).await?;
        let wait = until.saturating_duration_since(Instant::now());
        (!wait.is_zero()).then(|| self.refusal(wait))
    }

    /// Counts one failure; returns the refusal when it spent the client's last one.
    pub(crate) async fn record(&self, ip: IpAddr) -> Option<RateLimitStatus> {
        let key = bucket_of(ip, self.ipv6_prefix);
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
        let limit = FailureLimit::new(3, 64);
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

    async fn spend(limit: &FailureLimit, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        let mut refused = None;
        for _ in 0..2 {
            refused = limit.record(ip).await;
        }
        refused.is_some()
    }

    async fn is_blocked(limit: &FailureLimit, ip: &str) -> bool {
        limit.blocked(ip.parse().unwrap()).await.is_some()
    }

    #[tokio::test]
    async fn ipv6_clients_are_keyed_by_the_configured_prefix() {
        // A /48 prefix: a sweep through one /48 is one client, the next /48 another.
        let wide = FailureLimit::new(1, 48);
        assert!(spend(&wide, "2001:db8:1:1::1").await);
        assert!(is_blocked(&wide, "2001:db8:1:ffff::2").await);
        assert!(!is_blocked(&wide, "2001:db8:2::1").await);
        // A /128 prefix: every address is its own client.
        let narrow = FailureLimit::new(1, 128);
        assert!(spend(&narrow, "2001:db8::1").await);
        assert!(is_blocked(&narrow, "2001:db8::1").await);
        assert!(!is_blocked(&narrow, "2001:db8::2").await);
    }
}
