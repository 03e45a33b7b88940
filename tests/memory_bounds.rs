//! Memory bounds (issue #8): a million distinct users through the per-user limiter and the token
//! cache must peak at no more than 200 MB resident, and memory must come back under 50 MB once they
//! are idle and evicted. Its own test binary, so no other test's allocations share the process.
//! The numbers for the release build are in BENCHMARKS.md (`cargo bench --bench memory`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use testkit::memory;

#[global_allocator]
static ALLOCATOR: intellia_token_broker::allocator::Allocator =
    intellia_token_broker::allocator::Allocator;

const MB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_users_stay_within_bounds_and_memory_returns_after_eviction() {
    let r = memory::drive(
        1_000_000,
        // Enough to fill the cache (default max_entries 100,000) and evict some.
        120_000,
        // Longer than the cache pass takes in a debug build, so the cache is full at the peak.
        Duration::from_secs(20),
        50 * MB,
        Duration::from_secs(60),
    )
    .await;
    let report = format!(
        "{} users in {:?} (passes {:?} + {:?}), baseline {} MB, limiter only {} MB, peak {} MB ({} keys, {} tokens), after eviction {} MB in {:?} ({} keys, {} tokens)",
        r.users,
        r.elapsed,
        r.limiter_pass,
        r.cache_pass,
        r.baseline / MB,
        r.limiter_only / MB,
        r.peak / MB,
        r.tracked_keys_at_peak,
        r.cached_at_peak,
        r.after_eviction / MB,
        r.settled_in,
        r.tracked_keys_after,
        r.cached_after
    );
    println!("{report}");
    // The structures really held a million users and a full cache, or the bound means nothing.
    assert_eq!(r.tracked_keys_at_peak, 1_000_000, "{report}");
    assert_eq!(r.cached_at_peak, 100_000, "{report}");
    // And the readings are real: a million keys must show up in resident memory.
    assert!(
        r.baseline > 0 && r.limiter_only > r.baseline + 10 * MB,
        "{report}"
    );
    assert!(r.peak <= 200 * MB, "peak above 200 MB: {report}");
    assert_eq!((r.tracked_keys_after, r.cached_after), (0, 0), "{report}");
    assert!(r.after_eviction < 50 * MB, "not back under 50 MB: {report}");
}
