//! Buckets shared by every replica through Redis: all the buckets of one request in one script
//! call. Keys are hashed, so no user id or address is stored in clear.

use std::sync::Arc;

use super::{Buckets, RateLimitStatus, Shape, Subject, Verdict, ceil_secs};
use crate::config::RedisFallback;
use crate::limits::gcra::{Bucket, Decision, Gcra};
use crate::redis::{RedisStore, Unavailable};

pub(super) struct SharedLimits {
    store: Arc<RedisStore>,
    gcra: Gcra,
}

impl SharedLimits {
    pub(super) fn new(store: Arc<RedisStore>) -> SharedLimits {
        SharedLimits {
            store,
            gcra: Gcra::new(),
        }
    }

    pub(super) fn fallback(&self) -> RedisFallback {
        self.store.fallback()
    }

    fn bucket(&self, shape: &Shape, subject: Subject<'_>) -> Bucket {
        let key = match subject {
            Subject::User(user) => self.store.key(user.as_str(), shape.name),
            Subject::Ip(ip) => self.store.key(&ip.to_string(), shape.name),
            Subject::Upstream => self.store.key("all", shape.name),
        };
        Bucket {
            key,
            interval: shape.shared_interval,
            burst: shape.shared_burst,
        }
    }
}

fn status(shape: &Shape, d: &Decision) -> Result<RateLimitStatus, RateLimitStatus> {
    if !d.allowed {
        return Err(shape.refused(shape.shared_burst, d.retry_after));
    }
    Ok(RateLimitStatus {
        name: shape.name,
        quota: shape.shared_burst,
        window: shape.window,
        remaining: d.remaining,
        reset_secs: ceil_secs(d.reset),
        retry_after_secs: ceil_secs(d.retry_after).max(1),
    })
}

impl Buckets for SharedLimits {
    async fn decide(&self, checks: &[(&Shape, Subject<'_>)]) -> Result<Verdict, Unavailable> {
        let buckets: Vec<Bucket> = checks
            .iter()
            .map(|(shape, subject)| self.bucket(shape, *subject))
            .collect();
        let decisions = self.gcra.check(&self.store, buckets).await?;
        let mut tightest = None;
        for ((shape, _), decision) in checks.iter().zip(&decisions) {
            match status(shape, decision) {
                Ok(passed) => tightest = Some(RateLimitStatus::tightest(tightest, passed)),
                Err(refused) => return Ok(Err(refused)),
            }
        }
        Ok(Ok(tightest))
    }
}
