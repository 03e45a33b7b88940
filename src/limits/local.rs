//! The replica's own buckets (`governor`, lock-free atomics). Idle keys are evicted by the broker's
//! periodic housekeeping, so memory stays bounded by the number of recently active users and
//! addresses.

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{Buckets, RateLimitStatus, Shape, Subject, Verdict, ceil_secs};
use crate::redis::Unavailable;

type KeyedLimiter<K> =
    RateLimiter<K, DashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

fn quota(shape: &Shape) -> Option<Quota> {
    let rate = NonZeroU32::new(shape.local_rate)?;
    let burst = NonZeroU32::new(shape.local_burst)?;
    Some(
        Quota::with_period(Duration::from_secs(u64::from(shape.window)) / rate.get())?
            .allow_burst(burst),
    )
}

fn passed(shape: &Shape, quota: &Quota, snapshot: &StateSnapshot) -> RateLimitStatus {
    let remaining = snapshot.remaining_burst_capacity();
    let missing = quota.burst_size().get().saturating_sub(remaining);
    RateLimitStatus {
        name: shape.name,
        quota: quota.burst_size().get(),
        window: shape.window,
        remaining,
        reset_secs: ceil_secs(quota.replenish_interval() * missing),
        retry_after_secs: 1,
    }
}

struct Keyed<K: Hash + Eq + Clone> {
    quota: Quota,
    limiter: KeyedLimiter<K>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(shape: &Shape) -> Option<Self> {
        let quota = quota(shape)?;
        Some(Keyed {
            quota,
            limiter: RateLimiter::new(quota, DashMapStateStore::default(), DefaultClock::default()),
        })
    }

    fn check(&self, shape: &Shape, key: &K) -> Result<RateLimitStatus, RateLimitStatus> {
        match self.limiter.check_key(key) {
            Ok(snapshot) => Ok(passed(shape, &self.quota, &snapshot)),
            Err(not_until) => Err(shape.refused(
                self.quota.burst_size().get(),
                not_until.wait_time_from(self.limiter.clock().now()),
            )),
        }
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

pub(super) struct LocalLimits {
    per_user: Option<Keyed<UserKey>>,
    user_keys: RandomState,
    per_ip: Option<Keyed<IpAddr>>,
    upstream: Option<(Quota, DirectLimiter)>,
}

impl LocalLimits {
    pub(super) fn new(
        per_user: Option<&Shape>,
        per_ip: Option<&Shape>,
        upstream: Option<&Shape>,
    ) -> LocalLimits {
        LocalLimits {
            per_user: per_user.and_then(Keyed::new),
            user_keys: RandomState::new(),
            per_ip: per_ip.and_then(Keyed::new),
            upstream: upstream.and_then(quota).map(|quota| {
                let limiter: DirectLimiter =
                    RateLimiter::new(quota, InMemoryState::default(), DefaultClock::default());
                (quota, limiter)
            }),
        }
    }

    fn check(
        &self,
        shape: &Shape,
        subject: Subject<'_>,
    ) -> Result<Option<RateLimitStatus>, RateLimitStatus> {
        match subject {
            Subject::User(user) => self
                .per_user
                .as_ref()
                .map(|l| l.check(shape, &UserKey(self.user_keys.hash_one(user.as_str()))))
                .transpose(),
            Subject::Ip(ip) => self
                .per_ip
                .as_ref()
                .map(|l| l.check(shape, &ip))
                .transpose(),
            Subject::Upstream => {
                let Some((quota, limiter)) = &self.upstream else {
                    return Ok(None);
                };
                match limiter.check() {
                    Ok(snapshot) => Ok(Some(passed(shape, quota, &snapshot))),
                    Err(not_until) => Err(shape.refused(
                        quota.burst_size().get(),
                        not_until.wait_time_from(limiter.clock().now()),
                    )),
                }
            }
        }
    }

    pub(super) fn sweep(&self) {
        if let Some(l) = &self.per_user {
            l.sweep();
        }
        if let Some(l) = &self.per_ip {
            l.sweep();
        }
    }

    pub(super) fn tracked_keys(&self) -> usize {
        self.per_user.as_ref().map_or(0, |l| l.limiter.len())
            + self.per_ip.as_ref().map_or(0, |l| l.limiter.len())
    }
}

impl Buckets for LocalLimits {
    async fn decide(&self, checks: &[(&Shape, Subject<'_>)]) -> Result<Verdict, Unavailable> {
        let mut tightest = None;
        for (shape, subject) in checks {
            match self.check(shape, *subject) {
                Ok(Some(status)) => tightest = Some(RateLimitStatus::tightest(tightest, status)),
                Ok(None) => {}
                Err(refused) => return Ok(Err(refused)),
            }
        }
        Ok(Ok(tightest))
    }
}
