//! Drives many distinct users through the per-user limiter and the token cache, the two
//! structures that grow with the number of users, and reads the process's resident memory at
//! the peak and after idle eviction. Shared by the memory benchmark (`benches/memory.rs`, which
//! reports) and the memory-bound test (`tests/memory_bounds.rs`, which asserts).

use std::time::{Duration, Instant};

use intellia_token_broker::testing::MintedToken;
use intellia_token_broker::testing::TokenCache;
use intellia_token_broker::testing::UserId;
use intellia_token_broker::testing::{CacheSettings, Count, PerMinuteLimit, RateLimitSettings};
use intellia_token_broker::testing::{Limits, RequestKeys};
use secrecy::SecretString;
use time::OffsetDateTime;

/// Resident and peak-resident memory of this process, in bytes.
pub fn rss() -> (u64, u64) {
    (
        crate::procfs::status_bytes("self", "VmRSS"),
        crate::procfs::status_bytes("self", "VmHWM"),
    )
}

pub struct MemoryReport {
    pub users: usize,
    pub baseline: u64,
    /// After every user passed the limiter only.
    pub limiter_only: u64,
    pub peak: u64,
    pub tracked_keys_at_peak: usize,
    pub cached_at_peak: u64,
    pub after_eviction: u64,
    /// Idle time after the eviction pass until `after_eviction` was read.
    pub settled_in: Duration,
    pub tracked_keys_after: usize,
    pub cached_after: u64,
    /// Time taken by the limiter-only pass and by the limiter + cache pass.
    pub limiter_pass: Duration,
    pub cache_pass: Duration,
    pub elapsed: Duration,
}

/// Limits as deployed (a per-user bucket of 5), with a refill fast enough (10 ms per request)
/// that the buckets are full again, and so evictable, within a second of the run.
fn limits() -> Limits {
    let settings = RateLimitSettings {
        per_user: Some(PerMinuteLimit {
            per_minute: Count::new::<6_000>(),
            burst: Count::new::<5>(),
        }),
        per_ip: None,
        upstream: None,
    };
    Limits::new(&settings, None, 1)
}

fn for_user(user: &UserId) -> RequestKeys<'_> {
    RequestKeys {
        ip: None,
        user: Some(user),
    }
}

/// Tokens that stay fresh for `fresh` and are then evicted: expiry minus the default
/// `min_remaining_secs`.
fn minted(user_id: &str, fresh: Duration, token: &str) -> MintedToken {
    let settings = CacheSettings::default();
    MintedToken {
        // A fresh allocation per user, as a real mint makes.
        token: SecretString::from(token.to_owned()),
        expires_at: OffsetDateTime::now_utc()
            + Duration::from_secs(settings.min_remaining_secs.get())
            + fresh,
        user_id: user_id.to_owned(),
        organization_id: "org-0123456789".to_owned(),
        role: "chat".to_owned(),
    }
}

/// `users` distinct ids (26 bytes, the length of a typical OIDC `sub` with a prefix) through the
/// limiter, then through limiter and cache (default `max_entries`), then idle until every bucket is
/// full and every token stale, then one housekeeping pass as the broker's periodic task runs it.
/// Resident memory is then read until it is below `settled_below` or `max_idle` has passed: the
/// allocator returns freed pages gradually, over its decay time.
///
/// `cache_users` of the users also pass the cache (the bound is its `max_entries`, so a test need
/// not pay for all of them), each token fresh for `fresh` after its mint.
pub async fn drive(
    users: usize,
    cache_users: usize,
    fresh: Duration,
    settled_below: u64,
    max_idle: Duration,
) -> MemoryReport {
    intellia_token_broker::allocator::enable_background_purge().expect("jemalloc is installed");
    let started = Instant::now();
    let limits = limits();
    let cache = TokenCache::new(&CacheSettings::default(), None, Duration::from_secs(5));
    // A 400-byte token: larger than the simulator's, in the range of signed JWTs.
    let token = "t".repeat(400);
    let id = |i: usize| UserId::parse(format!("zitadel|{i:018}")).expect("a valid id");

    let (baseline, _) = rss();
    let pass = Instant::now();
    for i in 0..users {
        let _ = limits.check(for_user(&id(i))).await;
    }
    let limiter_pass = pass.elapsed();
    let (limiter_only, _) = rss();
    let pass = Instant::now();
    for i in 0..users {
        let user = id(i);
        if i >= cache_users {
            let _ = limits.check(for_user(&user)).await;
            continue;
        }
        let _ = limits.check(for_user(&user)).await;
        let _ = cache
            .get_or_mint(&user, || async {
                Ok::<_, ()>(minted(user.as_str(), fresh, &token))
            })
            .await;
    }
    let cache_pass = pass.elapsed();
    cache.run_housekeeping().await;
    let tracked_keys_at_peak = limits.tracked_keys();
    let cached_at_peak = cache.entry_count();
    let (_, peak) = rss();

    tokio::time::sleep(fresh + Duration::from_millis(500)).await;
    limits.sweep();
    cache.run_housekeeping().await;
    let idle_since = Instant::now();
    let mut after_eviction = rss().0;
    while after_eviction >= settled_below && idle_since.elapsed() < max_idle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after_eviction = rss().0;
    }
    let settled_in = idle_since.elapsed();
    MemoryReport {
        users,
        baseline,
        limiter_only,
        peak,
        tracked_keys_at_peak,
        cached_at_peak,
        after_eviction,
        settled_in,
        tracked_keys_after: limits.tracked_keys(),
        cached_after: cache.entry_count(),
        limiter_pass,
        cache_pass,
        elapsed: started.elapsed(),
    }
}
